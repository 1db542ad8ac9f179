"""Checks of the sound settings: ingest's and the loader's (videos.audio, data.audio), Shapes with sound,
the log-mel front end and the audio autoencoder with its vocoder. Each failure names the key."""

from __future__ import annotations

from opensora_lite.config.schema import AudioAutoencoderConfig, AudioDataConfig, MelConfig, ShapesConfig
from opensora_lite.data.synthetic import CLICK_HZ, PITCHES
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import ConfigError
from opensora_lite.registry import AUDIO_AUTOENCODER_KINDS, AUDIO_LAYOUTS, VOCODER_KINDS

DTYPE_NAMES = tuple(DTYPES)


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def validate_audio(a: AudioDataConfig, key: str) -> None:
    """The sound settings of ingest (videos.audio) or the loader (data.audio)."""
    _require(a.sample_rate >= 1000, f"{key}.sample_rate", f"must be at least 1000 Hz, got {a.sample_rate}")
    _require(a.layout in AUDIO_LAYOUTS, f"{key}.layout", f"unknown {a.layout!r} ({' | '.join(AUDIO_LAYOUTS)})")
    _require(a.context >= 0, f"{key}.context", f"samples on each side of a window: must be >= 0, got {a.context}")


def validate_shapes_sound(s: ShapesConfig, key: str = "shapes") -> None:
    _require(0.0 <= s.bounce <= 1.0, f"{key}.bounce", f"a share of clips: must be in [0, 1], got {s.bounce}")
    top = max(PITCHES[c] for c in s.colours if c in PITCHES) if s.colours else 0.0
    _require(
        not s.sound or s.sound_rate >= 8000,
        f"{key}.sound_rate",
        f"must be at least 8000 Hz (the click is at {CLICK_HZ:g} Hz, the highest tone {top:g} Hz), got {s.sound_rate}",
    )


def validate_mel(m: MelConfig, key: str) -> None:
    """A log-mel front end's settings (audio_autoencoder.mel)."""
    _require(m.sample_rate > 0, f"{key}.sample_rate", "must be positive")
    _require(m.n_fft >= 2, f"{key}.n_fft", f"must be at least 2, got {m.n_fft}")
    win = m.win_length if m.win_length is not None else m.n_fft
    _require(0 < win <= m.n_fft, f"{key}.win_length", f"must be in 1..n_fft ({m.n_fft}), got {win}")
    _require(m.hop_length > 0, f"{key}.hop_length", "must be positive")
    _require(m.n_mels > 0, f"{key}.n_mels", "must be positive")
    f_max = m.f_max if m.f_max is not None else m.sample_rate / 2
    _require(0 <= m.f_min < f_max, f"{key}.f_min", f"must be in [0, f_max) (f_max {f_max:g})")
    _require(f_max <= m.sample_rate / 2, f"{key}.f_max", f"above the Nyquist frequency {m.sample_rate / 2:g}")
    _require(m.power in (1.0, 2.0), f"{key}.power", f"1 (magnitude) or 2 (power), got {m.power}")
    _require(m.mel_scale in ("slaney", "htk"), f"{key}.mel_scale", f"unknown {m.mel_scale!r} (slaney | htk)")
    _require(m.norm in (None, "slaney"), f"{key}.norm", f"unknown {m.norm!r} (slaney | null)")
    _require(m.log_floor > 0, f"{key}.log_floor", "must be positive")
    _require(m.griffin_lim_iters >= 1, f"{key}.griffin_lim_iters", "must be at least 1")


def validate_audio_autoencoder(a: AudioAutoencoderConfig, key: str = "audio_autoencoder") -> None:
    """The audio stream's autoencoder, its front end and its vocoder (autoencoders/audio.py)."""
    validate_mel(a.mel, f"{key}.mel")
    kinds, vocoders = " | ".join(AUDIO_AUTOENCODER_KINDS), " | ".join(VOCODER_KINDS)
    _require(a.kind in AUDIO_AUTOENCODER_KINDS, f"{key}.kind", f"unknown {a.kind!r} ({kinds})")
    _require(a.channels in AUDIO_LAYOUTS.values(), f"{key}.channels", f"1 (mono) or 2 (stereo), got {a.channels}")
    _require(a.latent_channels >= 1, f"{key}.latent_channels", "must be positive")
    for name in ("time_factor", "mel_factor"):
        _require(getattr(a, name) >= 1, f"{key}.{name}", "must be positive")
    _require(
        a.mel.n_mels % a.mel_factor == 0,
        f"{key}.mel_factor",
        f"must divide audio_autoencoder.mel.n_mels ({a.mel.n_mels}), got {a.mel_factor}",
    )
    _require(a.scaling_factor != 0, f"{key}.scaling_factor", "must not be 0")
    _require(a.dtype in DTYPE_NAMES, f"{key}.dtype", f"unknown {a.dtype!r} ({' | '.join(DTYPE_NAMES)})")
    _require(
        a.kind != "ltx2_audio" or bool(a.path),
        f"{key}.path",
        "ltx2_audio loads local weights: give its diffusers folder (config.json + diffusion_pytorch_model.safetensors)",
    )
    if a.kind == "mel_ae":
        m = a.mel_ae
        _require(len(m.widths) >= 1 and min(m.widths) >= 1, f"{key}.mel_ae.widths", "needs positive channel counts")
        factor = 2 ** (len(m.widths) - 1)
        _require(
            a.time_factor == factor and a.mel_factor == factor,
            f"{key}.mel_ae.widths",
            f"{len(m.widths)} stages halve time and mel {factor}x; time_factor and mel_factor say "
            f"{a.time_factor}, {a.mel_factor}",
        )
        _require(m.depth >= 0, f"{key}.mel_ae.depth", "must be >= 0")
        _require(m.input_scale > 0, f"{key}.mel_ae.input_scale", "must be positive")
    v = a.vocoder
    _require(v.kind in VOCODER_KINDS, f"{key}.vocoder.kind", f"unknown {v.kind!r} ({vocoders})")
    _require(
        v.kind != "ltx2" or bool(v.path), f"{key}.vocoder.path", "the ltx2 vocoder loads local weights: give its folder"
    )
