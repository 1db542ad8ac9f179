"""The Flux-architecture MMDiT for video (model.family=flux), behind its model spec.

model.py (the MMDiT, BFL parameter names), layers.py, rope.py (3D RoPE, Flux layout), flops.py,
weights.py (BFL / diffusers / Open-Sora 2.0 / DCP reads, the rank-local lazy reader), convert.py and
opensora_convert.py (name and layout tables), export.py (BFL file, diffusers folder, diffusers LoRA).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from opensora_lite.errors import ConfigError
from opensora_lite.models.spec import AudioStream, Capabilities, FlopCount, ModelSpec


class FluxSpec(ModelSpec):
    from opensora_lite.models.flux.model import MMDiTConfig as config_class

    family = "flux"
    capabilities = Capabilities(
        image_condition=True,
        sequence_parallel=True,
        meta_init=True,
        export=("bfl", "diffusers", "opensora", "lora"),
        pooled_text=True,
    )
    block_groups = ("double_blocks", "single_blocks", "audio_blocks")  # audio_blocks: empty without model.audio
    lora_groups = {
        "attention": (r"double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)", r"single_blocks\.\d+\.linear[12]"),
        "mlp": (r"double_blocks\.\d+\.(img|txt)_mlp\.[02]", r"single_blocks\.\d+\.linear[12]"),
        "modulation": (r"double_blocks\.\d+\.(img|txt)_mod\.lin", r"single_blocks\.\d+\.modulation\.lin"),
        # the text embedders: T5 tokens into the stream (txt_in), the pooled CLIP vector into the modulation
        "text_in": (r"txt_in", r"vector_in\.(in|out)_layer"),
    }
    lora_naming = "bfl-flux-lora"
    lora_also_train = ("cond_in.",)  # the I2V input trains beside the adapters (stage.lora.train_cond_in)
    weights_metadata = {"format": "pt", "naming": "bfl-flux"}

    def build(self, cfg, image_condition: bool = False) -> nn.Module:
        from opensora_lite.models.flux.model import MMDiT

        return MMDiT(cfg, image_condition=image_condition)

    def initial_tensors(self, model: nn.Module, names: set[str] | None = None):
        return model.initial_tensors(names)

    def set_sequence_parallel(self, model: nn.Module, sp) -> None:
        model.set_sequence_parallel(sp)

    def has_image_condition(self, model: nn.Module) -> bool:
        return getattr(model, "cond_in", None) is not None

    def conditioned(self, state: dict[str, Tensor]) -> bool:
        return "cond_in.weight" in state

    def validate(self, cfg, text_encoder, key: str = "model") -> None:
        """Cross-field checks of an MMDiT config (ConfigError naming the key)."""
        from opensora_lite.models.attention import BACKENDS

        def need(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{key}.{field}", message)

        m = cfg
        need(m.hidden_size > 0 and m.num_heads > 0, "num_heads", "hidden_size and num_heads must be positive")
        divides = m.hidden_size % m.num_heads == 0
        need(divides, "num_heads", f"{m.num_heads} does not divide hidden_size {m.hidden_size}")
        need(len(m.axes_dim) == 3, "axes_dim", f"needs 3 entries (t, h, w), got {list(m.axes_dim)}")
        need(all(d % 2 == 0 for d in m.axes_dim), "axes_dim", f"entries must be even, got {list(m.axes_dim)}")
        need(sum(m.axes_dim) == m.head_dim, "axes_dim", f"sum {sum(m.axes_dim)} != head dim {m.head_dim}")
        need(m.depth >= 0 and m.depth_single_blocks >= 0, "depth", "block counts must be >= 0")
        need(m.attention_backend in BACKENDS, "attention_backend", f"{m.attention_backend!r} not in {BACKENDS}")
        t5, clip = text_encoder.t5.dim, text_encoder.clip.dim
        need(m.context_in_dim == t5, "context_in_dim", f"{m.context_in_dim} != text_encoder.t5.dim {t5}")
        need(m.vec_in_dim == clip, "vec_in_dim", f"{m.vec_in_dim} != text_encoder.clip.dim {clip}")

    def heads(self, cfg) -> int:
        return cfg.num_heads

    def flops(
        self, cfg, video_tokens: int, text_tokens: int, image_condition: bool = False, audio_tokens: int = 0
    ) -> FlopCount:
        from opensora_lite.models.flux.flops import mmdit_flops

        return mmdit_flops(cfg, video_tokens, text_tokens, image_condition, audio_tokens)

    def block_flops(self, cfg, video_tokens: int, text_tokens: int, audio_tokens: int = 0) -> dict[str, float]:
        from opensora_lite.models.flux.flops import audio_block_forward_flops, block_forward_flops

        double, single, attention = block_forward_flops(cfg, video_tokens, text_tokens)
        audio = sum(audio_block_forward_flops(cfg, video_tokens, text_tokens, audio_tokens)) if cfg.audio else 0.0
        return {"double_blocks": double + attention, "single_blocks": single + attention, "audio_blocks": audio}

    def activations(self, cfg):
        """Saved activations per token and hidden unit of each block group, measured with saved-tensor
        hooks on DoubleStreamBlock / SingleStreamBlock (elements: a + b * mlp_ratio); about 2 outside the
        blocks; fp32 q/k RMSNorm statistics under bf16 autocast add 2 per block."""
        from opensora_lite.models.spec import Activations

        r = cfg.mlp_ratio
        n_audio = cfg.depth if cfg.audio else 0
        audio = (18.4 + 2.0 * cfg.audio.mlp_ratio) * cfg.audio.hidden_size / cfg.hidden_size if cfg.audio else 0.0
        return Activations(
            width=cfg.hidden_size,
            per_block={"double_blocks": 18.4 + 2.0 * r, "single_blocks": 13.3 + 2.0 * r, "audio_blocks": audio},
            # the audio blocks' share is not measured yet: counted like a double block at the audio width
            blocks={"double_blocks": cfg.depth, "single_blocks": cfg.depth_single_blocks, "audio_blocks": n_audio},
            outside=2.0,
            fp32_under_bf16=2.0,
        )

    def read_weights(self, path: Path) -> tuple[dict[str, Tensor], str]:
        from opensora_lite.models.flux.weights import read_flux_weights

        return read_flux_weights(path)

    def lazy_weights(self, path: Path):
        from opensora_lite.models.flux.weights import LazyFluxWeights

        return LazyFluxWeights(path)

    def optional_keys(self) -> tuple[str, ...]:
        from opensora_lite.models.flux.audio import AUDIO_PREFIXES
        from opensora_lite.models.flux.weights import NEW_IN_VIDEO, OPTIONAL

        return NEW_IN_VIDEO + OPTIONAL + AUDIO_PREFIXES

    def latent_layers(self) -> tuple[str, ...]:
        """The layers whose shapes follow the latent space (channels x patch): a stage that switches
        autoencoder re-initialises them (train/stage_init.py)."""
        return ("img_in.", "final_layer.linear.", "cond_in.")

    def forward(self, model, x, t, t5, clip, cond=None, guidance=None) -> Tensor:
        return model(x, t, t5, clip, cond=cond, guidance=guidance)

    def audio_stream(self, cfg) -> AudioStream | None:
        a = cfg.audio
        return None if a is None else AudioStream(a.latent_channels, a.latent_bins, a.latents_per_second)

    def forward_av(self, model, x, t, audio, audio_t, t5, clip, video_rate, cond=None, guidance=None):
        return model(
            x, t, t5, clip, cond=cond, guidance=guidance, audio=audio, audio_timesteps=audio_t, video_rate=video_rate
        )


SPEC = FluxSpec()
