"""Flux-architecture MMDiT for video.

Double-stream blocks (separate weights for text and video tokens, joint attention) followed by
single-stream blocks (one fused linear over the concatenated sequence), AdaLN modulation from
timestep + CLIP pooled vector (+ optional guidance), QK RMSNorm and 3D RoPE over (t, h, w).
Parameter names follow the BFL FLUX.1 checkpoint. At one frame this is exactly Flux.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from opensora_lite.models.attention import AttentionCore
from opensora_lite.models.flux.audio import (
    AudioBlock,
    AudioLastLayer,
    AudioStreamConfig,
    audio_latents,
    audio_tokens,
    time_rope,
)
from opensora_lite.models.flux.layers import MLPEmbedder, Modulation, QKNorm, gelu_tanh, layer_norm, timestep_embedding
from opensora_lite.models.flux.rope import apply_rope, rope_cos_sin, video_position_ids


@dataclass
class MMDiTConfig:
    """Architecture of the MMDiT (the `model` config group, model.family=flux)."""

    family: str = "flux"
    latent_channels: int = 16  # channels of the autoencoder latent
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])  # (t, h, w) patch over latents
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single_blocks: int = 38
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    axes_dim: list[int] = field(default_factory=lambda: [16, 56, 56])  # RoPE split of head dim over (t, h, w)
    theta: float = 10000.0
    # (h, w) token grid: larger grids have their spatial RoPE positions interpolated into its range
    # (position interpolation; video_position_ids). None: integer positions at every size, as Flux.
    rope_reference_grid: list[int] | None = None
    context_in_dim: int = 4096  # T5 hidden size
    vec_in_dim: int = 768  # CLIP pooled size
    guidance_embed: bool = False  # Flux-dev distilled guidance input; Open-Sora's video model drops it
    attention_backend: str = "auto"  # auto | sdpa | flash2 | flash3 | math
    fused_qk_norm_rope: bool = False  # QK RMS norm and RoPE in one fp32 pass per tensor (an MFU lever)
    # the audio stream (models/flux/audio.py): null for a video model; a T2V checkpoint loads into a model
    # with one and computes the same video (its audio layers start where they change nothing)
    audio: Optional[AudioStreamConfig] = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        pt, ph, pw = self.patch_size
        return self.latent_channels * pt * ph * pw


def patchify(x: Tensor, patch: list[int] | tuple[int, ...]) -> Tensor:
    """[B, C, T, H, W] -> [B, T'H'W', C*pt*ph*pw], channel order (c, pt, ph, pw) as Flux packs (c, ph, pw)."""
    pt, ph, pw = patch
    return rearrange(x, "b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw)", pt=pt, ph=ph, pw=pw)


def unpatchify(tokens: Tensor, patch: list[int] | tuple[int, ...], grid: tuple[int, int, int]) -> Tensor:
    pt, ph, pw = patch
    t, h, w = grid
    return rearrange(tokens, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)


def _split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    q, k, v = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=num_heads)
    return q, k, v


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)


class DoubleStreamBlock(nn.Module):
    """Text and video streams with their own weights, attending jointly over [txt, img]."""

    def __init__(
        self, hidden: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, backend: str, fused: bool = False
    ):
        super().__init__()
        mlp_hidden = int(hidden * mlp_ratio)
        self.num_heads = num_heads
        self.fused_qk_norm_rope = fused
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(hidden, double=True))
            setattr(self, f"{stream}_norm1", layer_norm(hidden))
            setattr(self, f"{stream}_attn", SelfAttention(hidden, num_heads, qkv_bias))
            setattr(self, f"{stream}_norm2", layer_norm(hidden))
            mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), gelu_tanh(), nn.Linear(mlp_hidden, hidden))
            setattr(self, f"{stream}_mlp", mlp)
        self.attn_core = AttentionCore(backend)

    def _qkv(self, stream: str, x: Tensor, mod, rope: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of one stream, normed; also rotated when `rope` (its slice of the tables) is given."""
        attn: SelfAttention = getattr(self, f"{stream}_attn")
        q, k, v = _split_heads(attn.qkv(mod.modulate(getattr(self, f"{stream}_norm1")(x))), self.num_heads)
        q, k = attn.norm(q, k, v) if rope is None else attn.norm.with_rope(q, k, v, *rope)
        return q, k, v

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        n_txt = txt.shape[1]
        fused = self.fused_qk_norm_rope  # tables over [txt, img]: each stream rotates with its slice
        img_q, img_k, img_v = self._qkv("img", img, img_mod1, (cos[:, :, n_txt:], sin[:, :, n_txt:]) if fused else None)
        txt_q, txt_k, txt_v = self._qkv("txt", txt, txt_mod1, (cos[:, :, :n_txt], sin[:, :, :n_txt]) if fused else None)
        q, k = torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2)
        if not fused:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = torch.cat((txt_v, img_v), dim=2)
        out = rearrange(self.attn_core(q, k, v), "b h l d -> b l (h d)")
        txt_out, img_out = out[:, : txt.shape[1]], out[:, txt.shape[1] :]

        img = img_mod1.residual(img, self.img_attn.proj(img_out))
        img = img_mod2.residual(img, self.img_mlp(img_mod2.modulate(self.img_norm2(img))))
        txt = txt_mod1.residual(txt, self.txt_attn.proj(txt_out))
        txt = txt_mod2.residual(txt, self.txt_mlp(txt_mod2.modulate(self.txt_norm2(txt))))
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream over [txt, img]: fused qkv+MLP-in linear, parallel attention and MLP."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float, backend: str, fused: bool = False):
        super().__init__()
        self.fused_qk_norm_rope = fused
        self.hidden = hidden
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden * mlp_ratio)
        self.linear1 = nn.Linear(hidden, hidden * 3 + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden, hidden)
        self.norm = QKNorm(hidden // num_heads)
        self.pre_norm = layer_norm(hidden)
        self.mlp_act = gelu_tanh()
        self.modulation = Modulation(hidden, double=False)
        self.attn_core = AttentionCore(backend)

    def forward(self, x: Tensor, vec: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        mod, _ = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1(mod.modulate(self.pre_norm(x))), [3 * self.hidden, self.mlp_hidden], -1)
        q, k, v = _split_heads(qkv, self.num_heads)
        if self.fused_qk_norm_rope:
            q, k = self.norm.with_rope(q, k, v, cos, sin)
        else:
            q, k = self.norm(q, k, v)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attn = self.attn_core(q, k, v)
        out = self.linear2(torch.cat((rearrange(attn, "b h l d -> b l (h d)"), self.mlp_act(mlp)), dim=2))
        return mod.residual(x, out)


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm_final = layer_norm(hidden)
        self.linear = nn.Linear(hidden, out_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])


class MMDiT(nn.Module):
    """The video MMDiT. `image_condition` adds Open-Sora's zero-initialised I2V input `cond_in`."""

    def __init__(self, cfg: MMDiTConfig, image_condition: bool = False):
        super().__init__()
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by num_heads {cfg.num_heads}")
        if sum(cfg.axes_dim) != cfg.head_dim:
            raise ValueError(f"sum(axes_dim)={sum(cfg.axes_dim)} must equal head dim {cfg.head_dim}")
        self.cfg = cfg
        hidden = cfg.hidden_size
        self.img_in = nn.Linear(cfg.patch_dim, hidden, bias=True)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(cfg.vec_in_dim, hidden)
        self.guidance_in = MLPEmbedder(256, hidden) if cfg.guidance_embed else None
        self.txt_in = nn.Linear(cfg.context_in_dim, hidden)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(
                hidden, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.attention_backend, cfg.fused_qk_norm_rope
            )
            for _ in range(cfg.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, cfg.num_heads, cfg.mlp_ratio, cfg.attention_backend, cfg.fused_qk_norm_rope)
            for _ in range(cfg.depth_single_blocks)
        )
        self.final_layer = LastLayer(hidden, cfg.patch_dim)
        # I2V condition: mask (1 channel) + masked latents, patchified, added to img_in's output.
        pt, ph, pw = cfg.patch_size
        self.cond_in = nn.Linear((cfg.latent_channels + 1) * pt * ph * pw, hidden) if image_condition else None
        # the audio stream, built after the video layers (a seed gives the video layers the same values
        # with or without it); audio block i runs after double block i
        a = cfg.audio
        self.audio_in = nn.Linear(a.token_dim, a.hidden_size) if a else None
        self.audio_blocks = nn.ModuleList(
            AudioBlock(hidden, a, cfg.attention_backend) for _ in range(cfg.depth if a else 0)
        )
        self.audio_final_layer = AudioLastLayer(hidden, a) if a else None
        self.sp = None
        self.reset_parameters()

    @property
    def image_condition(self) -> bool:
        return self.cond_in is not None

    def set_sequence_parallel(self, sp) -> None:
        """Split video tokens over an SP group (parallel/sequence.py); None turns it off."""
        if sp is not None and self.cfg.num_heads % sp.size:
            raise ValueError(f"sequence parallel size {sp.size} does not divide the {self.cfg.num_heads} heads")
        if sp is not None and self.cfg.audio is not None and self.cfg.audio.num_heads % sp.size:
            heads = self.cfg.audio.num_heads
            raise ValueError(f"sequence parallel size {sp.size} does not divide the audio stream's {heads} heads")
        self.sp = sp
        for core in self._attention_cores():
            core.sp = sp

    def _attention_cores(self) -> list[AttentionCore]:
        return [m for m in self.modules() if isinstance(m, AttentionCore)]

    def _zero_initialised(self) -> set[str]:
        """Names of the linears that start at zero: every modulation, the output layers, cond_in and the
        audio->video gate (so an I2V or audio model starts computing the video of its T2V parent)."""
        from opensora_lite.checkpoint.files import clean_key

        zero = {f"{clean_key(n)}.lin" for n, m in self.named_modules() if isinstance(m, Modulation)}
        zero |= {"final_layer.linear", "final_layer.adaLN_modulation.1", "cond_in"}
        zero |= {"audio_final_layer.linear", "audio_final_layer.adaLN_modulation.1"}
        zero |= {f"audio_blocks.{i}.{n}" for i in range(len(self.audio_blocks)) for n in ("mod.lin", "a2v_gate")}
        return zero

    def reset_parameters(self) -> None:
        """From-scratch init: small normal linears; modulations, output layers and cond_in at zero.

        Zero gates make every block start as the identity (the DiT recipe); zero cond_in makes an I2V
        model compute exactly what its T2V parent did until training moves it, and a zero a2v_gate does
        the same for the audio stream.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        zero = self._zero_initialised()
        for name, module in self.named_modules():
            if name in zero:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)

    def initial_tensors(self, names: set[str] | None = None):
        """(name, tensor) for each parameter as building this model on the CPU and reset_parameters()
        would give it, one full tensor at a time, for a model built on the meta device (then sharded).
        It draws the global RNG exactly as that build does (nn.Linear's own init first, in construction
        order, then the normal pass), so from the same seed the values are bitwise today's. `names`: yield
        only these (the draws still all happen). Names are BFL names (wrapper prefixes removed)."""
        from opensora_lite.checkpoint.files import clean_key

        linears = [(clean_key(n), m) for n, m in self.named_modules() if isinstance(m, nn.Linear)]
        with torch.device("cpu"):
            for _, m in linears:  # construction: each nn.Linear draws its default init, in module order
                nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        zero = self._zero_initialised()
        wanted = (lambda name: True) if names is None else names.__contains__
        done = set()
        for name, m in linears:
            weight = torch.empty(m.out_features, m.in_features)
            nn.init.normal_(weight, std=0.02)
            if name in zero:
                weight.zero_()
            for key, value in ((f"{name}.weight", weight), (f"{name}.bias", torch.zeros(m.out_features))):
                if key.endswith("bias") and m.bias is None:
                    continue
                done.add(key)
                if wanted(key):
                    yield key, value
        for name, _ in self.named_parameters():
            key = clean_key(name)
            if key in done:
                continue
            if not key.endswith(".scale"):  # RMSNorm scales are the only other parameters
                raise RuntimeError(f"initial_tensors does not know how {key} is initialised")
            if wanted(key):  # QK norm scales (their size from the config: p may be a placeholder)
                yield key, torch.ones(self.cfg.audio.head_dim if key.startswith("audio_") else self.cfg.head_dim)

    def forward_tokens(
        self,
        img: Tensor,
        img_ids: Tensor,
        txt: Tensor,
        txt_ids: Tensor,
        timesteps: Tensor,
        y: Tensor,
        guidance: Tensor | None = None,
        cond: Tensor | None = None,
        audio: Tensor | None = None,
        audio_timesteps: Tensor | None = None,
        video_rate: float | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Flux's token-level forward: packed image tokens [B, L, patch_dim] -> predicted tokens.

        With `audio` tokens [B, La, token_dim] (a model with an audio stream), at their own flow times
        `audio_timesteps` [B], it returns (video tokens, audio tokens); `video_rate` is the video's latent
        frames a second (img_ids' time axis counts latent frames), which places both on one time line."""
        img = self.img_in(img)
        if cond is not None:
            if self.cond_in is None:
                raise ValueError("an image condition was given but the model was built without cond_in")
            img = img + self.cond_in(cond)
        n_img = img.shape[1]
        if self.sp is not None:  # this rank's share of the video tokens
            img, img_ids = self.sp.split(img, 1), self.sp.split(img_ids, img_ids.dim() - 2)
            for core in self._attention_cores():
                core.txt_len, core.valid_img = txt.shape[1], n_img
        vec = self.time_in(timestep_embedding(timesteps, 256).to(img.dtype))
        if self.guidance_in is not None:
            if guidance is None:
                raise ValueError("this model has guidance_embed=True and needs a guidance value")
            vec = vec + self.guidance_in(timestep_embedding(guidance, 256).to(img.dtype))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        ids = torch.cat((txt_ids, img_ids), dim=-2)
        cos, sin = rope_cos_sin(ids, self.cfg.axes_dim, self.cfg.theta)
        cos, sin = (cos[None, None], sin[None, None]) if ids.dim() == 2 else (cos[:, None], sin[:, None])
        stream = None if audio is None else self._audio_stream(audio, audio_timesteps, y, img_ids, video_rate)
        for i, block in enumerate(self.double_blocks):
            img, txt = block(img, txt, vec, cos, sin)
            if stream is not None:
                a, a_vec, img_rope, a_rope = stream
                layout = (txt.shape[1], audio.shape[1], n_img)
                img, a = self.audio_blocks[i](img, txt, a, a_vec, img_rope, a_rope, layout)
                stream = (a, a_vec, img_rope, a_rope)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, vec, cos, sin)
        out = self.final_layer(x[:, txt.shape[1] :], vec)
        out = out if self.sp is None else self.sp.gather(out, n_img, 1)
        if stream is None:
            return out
        a_out = self.audio_final_layer(stream[0], stream[1])
        return out, (a_out if self.sp is None else self.sp.gather(a_out, audio.shape[1], 1))

    def _audio_stream(self, audio: Tensor, timesteps: Tensor | None, y: Tensor, img_ids: Tensor, video_rate):
        """The audio stream's inputs: embedded tokens (this rank's share), its conditioning vector (its
        own flow time, the same text vector) and the time RoPE tables of the video and audio tokens."""
        a_cfg = self.cfg.audio
        if a_cfg is None:
            raise ValueError("audio was given but the model has no audio stream (model.audio is null)")
        if timesteps is None or video_rate is None:
            raise ValueError("the audio stream needs audio_timesteps and video_rate")
        a = self.audio_in(audio)
        a_vec = self.time_in(timestep_embedding(timesteps, 256).to(a.dtype)) + self.vector_in(y)
        # video latent frame k starts at k / video_rate seconds (img_ids' axis 0 is k; already this rank's)
        pos = img_ids[..., :1].double() * (a_cfg.latents_per_second / video_rate)
        cos, sin = rope_cos_sin(pos, [a_cfg.head_dim], a_cfg.theta)
        img_rope = (cos[None, None], sin[None, None]) if pos.dim() == 2 else (cos[:, None], sin[:, None])
        a_rope = time_rope(audio.shape[1], a_cfg.latents_per_second, a_cfg, audio.device)
        if self.sp is not None:
            a, a_rope = self.sp.split(a, 1), tuple(self.sp.split(r, 2) for r in a_rope)
        return a, a_vec, img_rope, a_rope

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        txt: Tensor,
        y: Tensor,
        cond: Tensor | None = None,
        guidance: Tensor | None = None,
        audio: Tensor | None = None,
        audio_timesteps: Tensor | None = None,
        video_rate: float | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Velocity for latents x [B, C, T, H, W] at times [B]; txt [B, L, context_in_dim]; y [B, vec_in_dim].

        `cond` is the I2V condition [B, C+1, T, H, W] (mask channel first, then masked latents).
        Time takes RoPE axis 0 (unused by Flux), one position per latent frame; text positions are zero.
        With audio latents [B, C_a, T_a, F_a] at flow times `audio_timesteps` [B] (a model with an audio
        stream; `video_rate`: latent frames a second of x) it returns (video velocity, audio velocity).
        """
        patch = self.cfg.patch_size
        _, _, t, h, w = x.shape
        if t % patch[0] or h % patch[1] or w % patch[2]:
            raise ValueError(f"latent shape {(t, h, w)} is not divisible by patch size {tuple(patch)}")
        grid = (t // patch[0], h // patch[1], w // patch[2])
        img_ids = video_position_ids(*grid, device=x.device, reference_grid=self.cfg.rope_reference_grid)
        txt_ids = torch.zeros(txt.shape[1], 3, device=x.device)
        out = self.forward_tokens(
            patchify(x, patch),
            img_ids,
            txt,
            txt_ids,
            timesteps,
            y,
            guidance=guidance,
            cond=None if cond is None else patchify(cond, patch),
            audio=None if audio is None else audio_tokens(audio),
            audio_timesteps=audio_timesteps,
            video_rate=video_rate,
        )
        # a fresh tensor, not a view of the tokens: FSDP2 warns on every step about a root module that
        # returns a view (an in-place op on it would skip its backward hook). One copy of the output.
        if audio is None:
            return unpatchify(out, patch, grid).clone(memory_format=torch.contiguous_format)
        video, sound = out
        sound = audio_latents(sound, self.cfg.audio.latent_channels)
        return unpatchify(video, patch, grid).clone(memory_format=torch.contiguous_format), sound.clone(
            memory_format=torch.contiguous_format
        )
