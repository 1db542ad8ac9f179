"""The MMDiT's audio stream (model.audio): a narrower tower beside the video blocks, joined to them by
attention in both directions, after LTX-2 and Ovi.

Audio latents [B, C_a, T_a, F_a] (an audio autoencoder's, at `latents_per_second`) become one token per
latent frame (C_a x F_a features, LTX-2's layout). Audio block i runs after double block i:

- the audio tokens attend to [text, audio, video] in one attention (self-attention, the text and
  video->audio at once), with their own modulation from the audio's flow time;
- the video tokens then attend to the audio tokens (audio->video), added through a gate from the
  audio's flow time that starts at zero: a video checkpoint with the audio stream added computes
  exactly the video it did.

Both cross-modal attentions rotate queries and keys by a time-only RoPE whose positions are seconds
(in units of audio latent frames), so a video latent frame and the audio latent frame heard with it
share a position. The video's own attention keeps its latent-frame positions (the T2V checkpoint's).
Text keys sit at position 0 (no rotation). Under Ulysses sequence parallelism the audio tokens are
split over the ranks like the video tokens (SegmentAttentionCore, parallel/sequence.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from opensora_lite.models.attention import SegmentAttentionCore
from opensora_lite.models.flux.layers import ModulationOut, QKNorm, gelu_tanh, layer_norm
from opensora_lite.models.flux.rope import apply_rope, rope_cos_sin

AUDIO_PREFIXES = ("audio_in.", "audio_blocks.", "audio_final_layer.")  # absent from a video checkpoint


@dataclass
class AudioStreamConfig:
    """The audio stream of the MMDiT (model.audio; null: a video-only model)."""

    latent_channels: int = 8  # the audio autoencoder's latent channels (LTX-2: 8)
    latent_bins: int = 16  # its latent frequency bins (LTX-2: 64 mels / 4); a token is channels x bins
    latents_per_second: float = 25.0  # audio latent frames a second (LTX-2: 16 kHz / hop 160 / 4)
    hidden_size: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    theta: float = 10000.0  # of the time RoPE (positions: seconds x latents_per_second)

    @property
    def token_dim(self) -> int:
        return self.latent_channels * self.latent_bins

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def audio_tokens(audio: Tensor) -> Tensor:
    """[B, C, T, F] latents -> [B, T, C*F] tokens, one per latent frame."""
    return rearrange(audio, "b c t f -> b t (c f)")


def audio_latents(tokens: Tensor, channels: int) -> Tensor:
    return rearrange(tokens, "b t (c f) -> b c t f", c=channels)


def time_positions(frames: int, per_second: float, positions_per_second: float, device=None) -> Tensor:
    """RoPE positions [frames, 1] of latent frames at `per_second`: their start time in seconds times
    `positions_per_second` (the audio latent rate, so audio frames sit on integers)."""
    return (torch.arange(frames, dtype=torch.float64, device=device) * (positions_per_second / per_second))[:, None]


def time_rope(frames: int, per_second: float, cfg: AudioStreamConfig, device=None) -> tuple[Tensor, Tensor]:
    """cos, sin [1, 1, frames, head_dim/2] of the time RoPE over the audio head dim."""
    cos, sin = rope_cos_sin(
        time_positions(frames, per_second, cfg.latents_per_second, device), [cfg.head_dim], cfg.theta
    )
    return cos[None, None], sin[None, None]


class _Modulation6(nn.Module):
    """AdaLN shift/scale/gate x 2 for the audio tokens, from the (video-width) conditioning vector."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.lin = nn.Linear(cond_dim, 6 * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut]:
        out = self.lin(nn.functional.silu(vec))[:, None, :].chunk(6, dim=-1)
        return ModulationOut(*out[:3]), ModulationOut(*out[3:])


class AudioBlock(nn.Module):
    """One audio block and the audio->video attention into the video stream beside it."""

    def __init__(self, video_hidden: int, cfg: AudioStreamConfig, backend: str):
        super().__init__()
        d, dv = cfg.hidden_size, video_hidden
        self.num_heads = cfg.num_heads
        self.mod = _Modulation6(dv, d)
        self.norm1, self.norm2, self.ctx_norm = layer_norm(d), layer_norm(d), layer_norm(dv)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)  # audio keys and values
        self.txt_kv = nn.Linear(dv, 2 * d)
        self.video_kv = nn.Linear(dv, 2 * d)  # video -> audio
        self.qk_norm = QKNorm(cfg.head_dim)
        self.proj = nn.Linear(d, d)
        mlp = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), gelu_tanh(), nn.Linear(mlp, d))
        # audio -> video: video queries, audio keys and values, added through a per-channel gate from the
        # audio's conditioning vector (its flow time: how much the sound can be trusted yet, as LTX-2's
        # timestep-modulated a2v gate); the gate starts at zero, so the video is unchanged
        self.a2v_norm = layer_norm(dv)
        self.a2v_q = nn.Linear(dv, d)
        self.a2v_kv = nn.Linear(d, 2 * d)
        self.a2v_qk_norm = QKNorm(cfg.head_dim)
        self.a2v_out = nn.Linear(d, dv)
        self.a2v_gate = nn.Linear(dv, dv)
        self.attn_core = SegmentAttentionCore(backend)
        self.a2v_core = SegmentAttentionCore(backend)

    def _heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "b l (h d) -> b h l d", h=self.num_heads)

    def _kv(self, layer: nn.Linear, x: Tensor) -> tuple[Tensor, Tensor]:
        k, v = layer(x).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        img: Tensor,
        txt: Tensor,
        audio: Tensor,
        vec: Tensor,
        img_rope: tuple,
        audio_rope: tuple,
        layout: tuple[int, int, int],
    ) -> tuple[Tensor, Tensor]:
        """(video tokens, audio tokens) after this block; `vec` is the audio's conditioning vector, the
        ropes are the time tables of this rank's video and audio tokens, `layout` the (text, audio,
        video) tokens of the whole sequence (sequence parallelism holds a share of the last two)."""
        mod1, mod2 = self.mod(vec)
        x = mod1.modulate(self.norm1(audio))
        q = self._heads(self.q(x))
        k_a, v_a = self._kv(self.kv, x)
        k_t, v_t = self._kv(self.txt_kv, self.ctx_norm(txt))
        k_v, v_v = self._kv(self.video_kv, self.ctx_norm(img))
        q, k_a = self.qk_norm(q, k_a, v_a)
        k_t, k_v = (self.qk_norm.key_norm(k).to(v_a.dtype) for k in (k_t, k_v))
        q, k_a, k_v = apply_rope(q, *audio_rope), apply_rope(k_a, *audio_rope), apply_rope(k_v, *img_rope)
        n_txt, n_audio, n_img = layout
        out = self.attn_core(
            q,
            torch.cat((k_t, k_a, k_v), dim=2),
            torch.cat((v_t, v_a, v_v), dim=2),
            ((n_audio, True),),
            ((n_txt, False), (n_audio, True), (n_img, True)),
        )
        audio = mod1.residual(audio, self.proj(rearrange(out, "b h l d -> b l (h d)")))
        audio = mod2.residual(audio, self.mlp(mod2.modulate(self.norm2(audio))))

        q = self._heads(self.a2v_q(self.a2v_norm(img)))
        k, v = self._kv(self.a2v_kv, self.norm1(audio))
        q, k = self.a2v_qk_norm(q, k, v)
        q, k = apply_rope(q, *img_rope), apply_rope(k, *audio_rope)
        out = self.a2v_core(q, k, v, ((n_img, True),), ((n_audio, True),))
        gate = self.a2v_gate(nn.functional.silu(vec))[:, None, :]
        return torch.addcmul(img, gate, self.a2v_out(rearrange(out, "b h l d -> b l (h d)"))), audio


class AudioLastLayer(nn.Module):
    def __init__(self, video_hidden: int, cfg: AudioStreamConfig):
        super().__init__()
        self.norm_final = layer_norm(cfg.hidden_size)
        self.linear = nn.Linear(cfg.hidden_size, cfg.token_dim, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(video_hidden, 2 * cfg.hidden_size, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :])
