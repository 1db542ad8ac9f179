"""WanSpec: what the framework needs from the Wan family (models/spec.py), over diffusers' model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from torch import Tensor, nn

from opensora_lite.errors import ConfigError
from opensora_lite.models.spec import Capabilities, FlopCount, ModelSpec
from opensora_lite.models.wan.config import WanConfig
from opensora_lite.models.wan.flops import wan_block_flops, wan_flops

_BLOCK = r"blocks\.\d+\."


class WanSpec(ModelSpec):
    """Wan 2.1 / 2.2 text-to-video (diffusers' WanTransformer3DModel; canonical names are diffusers')."""

    family = "wan"
    config_class = WanConfig
    # No I2V (Wan's image cross-attention / Wan 2.2's per-token timesteps), no sequence parallelism
    # (diffusers' attention dispatch has no hook of ours). Exports a diffusers transformer folder.
    capabilities = Capabilities(meta_init=True, export=("diffusers",))
    block_groups = ("blocks",)
    lora_groups = {
        "attention": (_BLOCK + r"attn[12]\.(to_q|to_k|to_v|to_out\.0)",),  # self- and cross-attention
        "mlp": (_BLOCK + r"ffn\.net\.(0\.proj|2)",),
        # the time embedding's projection to every block's six modulations (Wan shares it across blocks;
        # each block adds its own learned scale_shift_table, a parameter, not a linear)
        "modulation": (r"condition_embedder\.time_proj",),
        "text_in": (r"condition_embedder\.text_embedder\.linear_[12]",),  # T5 tokens into the model width
    }

    lora_naming = "diffusers-wan-lora"
    weights_metadata = {"format": "pt", "naming": "diffusers-wan"}

    def validate(self, cfg: WanConfig, text_encoder, key: str = "model") -> None:
        from opensora_lite.models.wan.config import ATTENTION_BACKENDS

        def need(ok: bool, field: str, message: str) -> None:
            if not ok:
                raise ConfigError(f"{key}.{field}", message)

        need(cfg.num_attention_heads > 0 and cfg.attention_head_dim > 0, "num_attention_heads", "must be positive")
        need(cfg.num_layers >= 0, "num_layers", "must be >= 0")
        need(cfg.attention_head_dim % 2 == 0, "attention_head_dim", "must be even (RoPE pairs)")
        need(cfg.attention_backend in ATTENTION_BACKENDS, "attention_backend", f"not in {ATTENTION_BACKENDS}")
        t5 = text_encoder.t5.dim
        need(cfg.text_dim == t5, "text_dim", f"{cfg.text_dim} != text_encoder.t5.dim {t5}")

    def heads(self, cfg: WanConfig) -> int:
        return cfg.num_attention_heads

    def activations(self, cfg: WanConfig):
        """Saved activations per token and hidden unit of a Wan block: measured with saved-tensor hooks on
        the tiny model at 1,024 video tokens (39.4 at ffn_dim = 4 x width; the FFN adds 2.5 per unit of
        ffn_dim / width); about 4 outside the blocks."""
        from opensora_lite.models.spec import Activations

        return Activations(
            width=cfg.hidden_size,
            per_block={"blocks": 29.4 + 2.5 * cfg.ffn_dim / cfg.hidden_size},
            blocks={"blocks": cfg.num_layers},
            outside=4.0,
            fp32_under_bf16=2.0,
        )

    def latent_layers(self) -> tuple[str, ...]:
        return ("patch_embedding.", "proj_out.")

    # -- building ----------------------------------------------------------------------------------
    def build(self, cfg: WanConfig, image_condition: bool = False) -> nn.Module:
        if image_condition:
            raise ConfigError("model.family", "wan has no image condition yet (i2v/v2v tasks need family flux)")
        from opensora_lite.models.wan.model import build_wan

        return build_wan(cfg)

    def initial_tensors(self, model: nn.Module, names: set[str] | None = None) -> Iterator[tuple[str, Tensor]]:
        from opensora_lite.models.wan.model import initial_tensors

        return initial_tensors(model, names)

    # -- cost ----------------------------------------------------------------------------------------
    def flops(self, cfg: WanConfig, video_tokens: int, text_tokens: int, image_condition: bool = False) -> FlopCount:
        if image_condition:
            raise ConfigError("model.family", "wan has no image condition yet")
        return wan_flops(cfg, video_tokens, text_tokens)

    def block_flops(
        self, cfg: WanConfig, video_tokens: int, text_tokens: int, audio_tokens: int = 0
    ) -> dict[str, float]:
        return {"blocks": sum(wan_block_flops(cfg, video_tokens, text_tokens))}

    # -- weights -------------------------------------------------------------------------------------
    def read_weights(self, path: Path) -> tuple[dict[str, Tensor], str]:
        from opensora_lite.models.wan.weights import read_wan_weights

        return read_wan_weights(path)

    def lazy_weights(self, path: Path):
        from opensora_lite.models.wan.weights import LazyWanWeights

        return LazyWanWeights(path)

    def export(self, state: dict[str, Tensor], out: Path, fmt: str, cfg: WanConfig) -> list[Path]:
        """`out` becomes a diffusers transformer folder (config.json + safetensors), tensors as given."""
        if fmt not in self.capabilities.export:
            raise ConfigError("formats", f"model family wan exports {', '.join(self.capabilities.export)}, not {fmt}")
        from opensora_lite.models.wan.export import export_diffusers

        return export_diffusers(state, Path(out), cfg)

    # -- the forward call ----------------------------------------------------------------------------
    def forward(
        self,
        model: nn.Module,
        x: Tensor,
        t: Tensor,
        t5: Tensor,
        clip: Tensor | None,
        cond: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """Wan's velocity for latents x [B, C, T, H, W] at flow times t [B]. Wan was trained on the same
        rectified flow (x_t = (1 - t) x0 + t noise, target noise - x0) with diffusers' timestep = t * 1000
        (FlowMatchEulerDiscreteScheduler's sigma * num_train_timesteps). The CLIP vector is not used."""
        if cond is not None:
            raise ValueError("model family wan takes no I2V condition (cond); its stages are text-to-video")
        if guidance is not None:
            raise ValueError("model family wan has no guidance input (a distilled-guidance embedding)")
        return model(hidden_states=x, timestep=t * 1000.0, encoder_hidden_states=t5, return_dict=False)[0]


SPEC = WanSpec()
