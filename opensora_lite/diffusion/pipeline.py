"""Prompts (and reference frames) -> videos: captions, text encoders, noise, condition, sampler, decoder.

Used by `osl-sample`, by validation during training and by the end-of-stage evaluation. `rt` is
anything with cfg, text, ae, device and autocast() (a training Runtime or the sampling CLI's context);
with sound (`generate_av`) also audio_ae, and a vocoder (built from audio_autoencoder.vocoder if absent).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from opensora_lite.config.schema import SampleConfig
from opensora_lite.diffusion.av import Flags
from opensora_lite.diffusion.conditioning import TASKS, V2V, build_condition
from opensora_lite.diffusion.guidance import Guidance
from opensora_lite.diffusion.sampler import sample_av_latents, sample_latents
from opensora_lite.errors import ConfigError
from opensora_lite.models.spec import spec_for


def guidance_of(s: SampleConfig) -> Guidance:
    return Guidance(
        text_scale=s.cfg_scale,
        image_scale=s.image_cfg_scale,
        text_oscillation=s.text_oscillation,
        image_oscillation=s.image_oscillation,
        image_ramp=s.image_ramp,
        oscillation_warmup=s.oscillation_warmup,
        audio_scale=s.audio_cfg_scale,
    )


def template_captions(prompts: list[str], template: str, **fields) -> list[str]:
    """The captions the model saw in training, from the training caption template (data.caption_template)
    and the sampling values of its fields (fps, motion_score, num_frames, ...)."""
    if template == "{caption}":
        return list(prompts)
    out = []
    for p in prompts:
        try:
            out.append(template.format_map({**{k: v for k, v in fields.items() if v is not None}, "caption": p}))
        except KeyError as exc:
            from opensora_lite.data.captions import MOTION_FIELDS

            field = "motion_score" if exc.args[0] in MOTION_FIELDS else exc.args[0]  # sample.motion_score fills them
            raise ConfigError(field, f"the run's caption template {template!r} needs it: add {field}=...") from None
    return out


def pixel_frames(ae, latent_frames: int) -> int:
    """Video frames whose encoding has `latent_frames` latent frames."""
    if ae.causal:
        return (latent_frames - 1) * ae.temporal_factor + 1
    return latent_frames * ae.temporal_factor


def to_uint8(video: Tensor) -> np.ndarray:
    """[B, 3, T, H, W] in [-1, 1] -> uint8 [B, T, H, W, 3]."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def _encode(ae, frames: np.ndarray, device) -> Tensor:
    """uint8 [B, F, H, W, 3] -> latents [B, C, T, h, w] (the posterior mean: a fixed reference)."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return ae.encode(video, sample=False)


def reference_condition(
    ae, task: str, ref: np.ndarray, ref_end: np.ndarray | None, latent_shape: tuple, v2v_frames: int, device
) -> Tensor:
    """The condition [B, C+1, T, h, w] of a task from uint8 references [B, F, H, W, 3]: i2v_head takes
    the first frame, i2v_tail the last, i2v_loop the first of `ref` and the last of `ref_end` (default
    `ref`), v2v_head / v2v_tail the frames of the first / last `v2v_frames` latent frames."""
    b, c, lat_t, h, w = latent_shape
    head = tail = video = None
    if task in V2V:
        k = min(v2v_frames, lat_t - 1)
        n = pixel_frames(ae, k)
        if k < 1:
            raise ConfigError("v2v_frames", f"must be >= 1 and below the {lat_t} latent frames of the video")
        if ref.shape[1] < n:
            raise ConfigError("reference", f"has {ref.shape[1]} frames; {task} with {k} latent frames needs {n}")
        given = _encode(ae, ref[:, :n] if task == "v2v_head" else ref[:, -n:], device)
        video = given.new_zeros(b, c, lat_t, h, w)
        if task == "v2v_head":
            video[:, :, :k] = given[:, :, :k]
        else:
            video[:, :, -k:] = given[:, :, -k:]
        head = tail = video[:, :, :1]
    else:
        head = _encode(ae, ref[:, :1], device)
        tail = _encode(ae, (ref_end if ref_end is not None else ref)[:, -1:], device) if task != "i2v_head" else head
        if task == "i2v_tail":
            head = tail
    return build_condition([task] * b, head, tail, lat_t, video, v2v_frames)


@torch.no_grad()
def generate(
    rt,
    model: nn.Module,
    captions: list[str],
    shape: tuple[int, int, int],
    seed: int | list[int],
    reference: np.ndarray | None = None,
    task: str | None = None,
    reference_end: np.ndarray | None = None,
    v2v_frames: int = 0,
) -> np.ndarray:
    """Sample videos [N, T, H, W, 3] uint8 for captions at shape (frames, height, width).

    seed: an int draws each batch's noise from seed + batch offset (the evaluation's streams); a list
    gives every sample its own seed, so a sample does not depend on the batch it falls in.
    reference: uint8 [N, H, W, 3] (an image) or [N, F, H, W, 3] (frames) for the conditioned tasks;
    `task` defaults to i2v_head with a reference and t2v without."""
    cfg, ae = rt.cfg, rt.ae
    task = task or ("i2v_head" if reference is not None else "t2v")
    if task not in TASKS:
        raise ConfigError("task", f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    spec = spec_for(cfg.model)  # the model's family: its forward call and whether it takes a condition
    has_cond = spec.has_image_condition(model)
    if task != "t2v":
        if reference is None:
            raise ConfigError("reference", f"task {task} needs a reference image or video")
        if not has_cond:
            raise ConfigError("task", f"{task} needs a model with an image condition: use an I2V stage")
        reference = reference[:, None] if reference.ndim == 4 else reference
        reference_end = (
            reference_end[:, None] if reference_end is not None and reference_end.ndim == 4 else reference_end
        )
    frames, h, w = shape
    lat_t = ae.latent_frames(frames) if ae.valid_num_frames(frames) else frames
    out = []
    bs = cfg.sample.batch_size
    for i in range(0, len(captions), bs):
        chunk = captions[i : i + bs]
        t5, clip = rt.text.encode(chunk)
        lat_shape = (len(chunk), ae.latent_channels, lat_t, h // ae.spatial_factor, w // ae.spatial_factor)
        (noise,) = draw_noise(seed, i, len(chunk), lat_shape[1:])
        noise = noise.to(rt.device)
        cond = None
        if has_cond:
            if task == "t2v":
                cond = torch.zeros(len(chunk), ae.latent_channels + 1, *noise.shape[2:], device=rt.device)
            else:
                end = None if reference_end is None else reference_end[i : i + bs]
                cond = reference_condition(ae, task, reference[i : i + bs], end, lat_shape, v2v_frames, rt.device)
        latents = sample_latents(
            functools.partial(spec.forward, model),
            noise,
            t5,
            clip,
            rt.text.empty(),
            cfg.flow,
            cfg.model.patch_size,
            cfg.sample.num_steps,
            guidance_of(cfg.sample),
            cond=cond,
            autocast=rt.autocast(),
            image_task=task.startswith("i2v"),
        )
        out.append(to_uint8(ae.decode(latents, frames if ae.valid_num_frames(frames) else None)))
    return np.concatenate(out)


# what sampling does with sound (diffusion/av.py's tasks): text -> audio + video, and video -> audio
AV_SAMPLING_TASKS = ("t2av", "v2a")


@dataclass
class AVSamples:
    """Clips with sound: what generate_av gives."""

    videos: np.ndarray  # uint8 [N, T, H, W, 3]
    audio: np.ndarray  # float32 [N, channels, samples] in [-1, 1] at sample_rate, from the first frame on
    logmel: np.ndarray  # float32 [N, channels, frames, mels]: the decoded log-mel (the sheet's spectrogram)
    sample_rate: int


def vocoder_of(rt):
    """The sampler's vocoder: rt.vocoder when it has one (osl-sample builds it once), else the run's."""
    from opensora_lite.autoencoders.audio import build_vocoder

    found = getattr(rt, "vocoder", None)
    return (found if found is not None else build_vocoder(rt.cfg.audio_autoencoder)).to(rt.device).eval()


@torch.no_grad()
def generate_av(
    rt,
    model: nn.Module,
    captions: list[str],
    shape: tuple[int, int, int],
    seed: int | list[int],
    task: str = "t2av",
    video: np.ndarray | None = None,
) -> AVSamples:
    """Sample clips with sound at shape (frames, height, width) and the sampling fps, through the model's
    spec.forward_av. `task`: t2av (both generated) or v2a (`video`, uint8 [N, frames, H, W, 3], encoded
    and given clean; its frames are returned as they are). Seeds as generate(): each batch's (or each
    sample's) generator draws the video noise, then the audio noise. The audio latents are decoded by
    rt.audio_ae to a log-mel, and by the vocoder to a waveform as long as the clip."""
    from opensora_lite.data.audio import track_samples

    cfg, ae, audio_ae = rt.cfg, rt.ae, getattr(rt, "audio_ae", None)
    if task not in AV_SAMPLING_TASKS:
        raise ConfigError("task", f"a model with sound samples {' or '.join(AV_SAMPLING_TASKS)}, not {task!r}")
    spec = spec_for(cfg.model)
    if spec.audio_stream(cfg.model) is None:
        raise ConfigError("task", f"{task} needs a model with an audio stream (model.audio)")
    if audio_ae is None:
        raise ConfigError("audio_autoencoder", f"{task} needs the run's audio autoencoder (data.audio.enabled)")
    frames, h, w = shape
    if task == "v2a" and (video is None or tuple(video.shape[1:4]) != (frames, h, w)):
        got = None if video is None else tuple(video.shape[1:4])
        raise ConfigError("video", f"v2a needs the given video's frames at {frames} x {h} x {w}, got {got}")
    fps = cfg.sample.fps or cfg.data.target_fps
    rate = audio_ae.cfg.mel.sample_rate
    samples = track_samples(frames, fps, rate)  # the window rule: the sound of these frames
    video_rate = fps / ae.temporal_factor  # latent frames a second (train/tasks/audio_video.py)
    lat_t = ae.latent_frames(frames) if ae.valid_num_frames(frames) else frames
    has_cond = spec.has_image_condition(model)
    vocoder = vocoder_of(rt)
    out_rate = vocoder.sample_rate

    def forward_av(x, t, a, ta, t5, clip, cond):
        return spec.forward_av(model, x, t, a, ta, t5, clip, video_rate, cond)

    videos, waves, mels = [], [], []
    bs = cfg.sample.batch_size
    for i in range(0, len(captions), bs):
        chunk = captions[i : i + bs]
        n = len(chunk)
        lat_shape = (ae.latent_channels, lat_t, h // ae.spatial_factor, w // ae.spatial_factor)
        a_shape = audio_ae.latent_shape(samples)
        noise, a_noise = draw_noise(seed, i, n, lat_shape, a_shape)
        x = noise.to(rt.device)
        if task == "v2a":
            x = _encode(ae, video[i : i + bs], rt.device)
        t5, clip = rt.text.encode(chunk)
        cond = torch.zeros(n, ae.latent_channels + 1, *x.shape[2:], device=rt.device) if has_cond else None
        latents, a_latents = sample_av_latents(
            forward_av,
            x,
            a_noise.to(rt.device),
            Flags.of([task] * n),
            t5,
            clip,
            rt.text.empty(),
            cfg.flow,
            cfg.model.patch_size,
            cfg.sample.num_steps,
            guidance_of(cfg.sample),
            cond=cond,
            autocast=rt.autocast(),
        )
        if task == "v2a":
            videos.append(np.asarray(video[i : i + bs], dtype=np.uint8))
        else:
            videos.append(to_uint8(ae.decode(latents, frames if ae.valid_num_frames(frames) else None)))
        wave, mel = decode_sound(audio_ae, vocoder, a_latents, samples)
        waves.append(wave.cpu().numpy())
        mels.append(mel.float().cpu().numpy())
    return AVSamples(np.concatenate(videos), np.concatenate(waves), np.concatenate(mels), out_rate)


def decode_sound(audio_ae, vocoder, latents: Tensor, samples: int) -> tuple[Tensor, Tensor]:
    """(waveform [B, channels, length] at the vocoder's rate, log-mel) of audio latents for a clip whose
    sound is `samples` long at the front end's rate: the audio autoencoder's log-mel of that many samples,
    then the vocoder asked for the clip's length (a vocoder of fixed length is cut or padded to it)."""
    # no sound's log-mel lies below the front end's floor (log 1e-5); a decoder's may, far enough that
    # exp() of it is a denormal float, which made Griffin-Lim a thousand times slower: clamp to silence
    mel = audio_ae.decode(latents, audio_ae.mel.num_frames(samples)).clamp(min=audio_ae.silence)
    length = round(samples * vocoder.sample_rate / audio_ae.mel.cfg.sample_rate)
    wave = vocoder(mel, length).float().clamp(-1, 1)[..., :length]
    return nn.functional.pad(wave, (0, length - wave.shape[-1])), mel


def draw_noise(seed: int | list[int], start: int, n: int, *shapes: tuple) -> list[Tensor]:
    """Starting noise of one shape per modality for the n samples from `start` on: one generator seeded
    seed + start for the batch, or, given a seed per sample, one generator per sample (so that a sample's
    noise does not depend on the batch it lands in). Modalities draw in the order given."""
    if isinstance(seed, int):
        g = torch.Generator().manual_seed(seed + start)
        return [torch.randn(n, *shape, generator=g) for shape in shapes]
    draws = []
    for s in seed[start : start + n]:
        g = torch.Generator().manual_seed(s)
        draws.append([torch.randn(*shape, generator=g) for shape in shapes])
    return [torch.stack(d) for d in zip(*draws)]
