"""An audio+video stage (stage.kind=audio_video): the flow objective on both streams of a model with
an audio stream (model.audio), per-modality tasks and a balanced loss (diffusion/av.py).

A step encodes the batch's video (the stage's autoencoder) and its sound (the run's audio
autoencoder, `rt.audio_ae`, behind the interface below), draws each sample's task (t2av, v2a, a2v,
i2av: which modality is generated, which given), builds the first-frame condition for i2av, and takes
both losses through the spec's forward_av. The two losses are logged apart (`loss_video`,
`loss_audio`) beside their combination; the balance's running means are checkpointed with the stage.
Everything else (the model, its weights from a video checkpoint, the engine's blocks) is the
diffusion stage's: a T2V checkpoint loads with the audio layers initialised (spec.optional_keys). The
evaluation samples with sound and scores it (train/evaluation_av.py).
"""

from __future__ import annotations

from typing import Protocol

import torch

from opensora_lite.data.audio import front_end_input
from opensora_lite.data.loader import frames_on_device
from opensora_lite.diffusion.av import Flags, LossBalance, av_flow_loss
from opensora_lite.diffusion.conditioning import build_condition, sample_tasks
from opensora_lite.diffusion.objective import drop_text
from opensora_lite.errors import ConfigError
from opensora_lite.train.evaluation_av import evaluate_av_stage
from opensora_lite.train.tasks.base import StageContext
from opensora_lite.train.tasks.diffusion import DiffusionTask


class AudioLatentEncoder(Protocol):
    """What the task needs of an audio autoencoder: waveforms [B, channels, samples] in [-1, 1] at
    data.audio.sample_rate (with `context` samples of the track on each side of the window) -> latents
    [B, C_a, T_a, F_a] of the window at `latents_per_second` (the model's model.audio.latent_channels,
    latent_bins and latents_per_second)."""

    latents_per_second: float

    def encode(
        self, audio: torch.Tensor, generator: torch.Generator | None = None, context: int = 0
    ) -> torch.Tensor: ...


class AudioVideoTask(DiffusionTask):
    kind = "audio_video"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        self.image_condition = ctx.stage.tasks.get("i2av", 0) > 0
        self.audio_ae: AudioLatentEncoder | None = getattr(ctx.rt, "audio_ae", None)
        stream = self.spec.audio_stream(ctx.cfg.model)
        if self.audio_ae is None:
            raise ConfigError(
                "audio_autoencoder", f"stage {ctx.name} (kind audio_video) needs an audio autoencoder for its latents"
            )
        if stream is None or stream.latents_per_second != self.audio_ae.latents_per_second:
            raise ConfigError(
                "model.audio.latents_per_second",
                f"the audio autoencoder gives {self.audio_ae.latents_per_second} latent frames a second",
            )
        av = ctx.stage.audio_video
        self.balance = LossBalance(av.weights, av.balance, av.balance_decay)
        self._window: dict[str, list[float]] = {"video": [], "audio": []}

    # -- a step --------------------------------------------------------------------------------------
    def micro_step(self, model, batch: dict, gen: torch.Generator, step: int, last: bool, device_gen=None):
        rt, stage, engine = self.ctx.rt, self.ctx.stage, self.ctx.engine
        with torch.no_grad():
            video = frames_on_device(batch["video"], rt.device)
            x0 = rt.ae.encode(video, generator=gen)
            t5, clip = rt.text.encode(batch["captions"])
            t5, clip = drop_text(t5, clip, rt.text.empty(), stage.text_dropout, gen)
            sound, context = front_end_input(batch)  # the windows with their context (data/audio.py)
            wave = batch["audio"]
            a0 = self.audio_ae.encode(sound.to(rt.device).float(), generator=gen, context=context).float()
            flags = Flags.of(sample_tasks(stage.tasks, x0.shape[0], gen))
            cond = None
            if self.image_condition:
                head, tail = rt.ae.encode(video[:, :, :1], generator=gen), rt.ae.encode(video[:, :, -1:], generator=gen)
                cond = build_condition(flags.video_tasks, head, tail, x0.shape[2])
        # the window's frame rate from its sound (the window rule: frames x rate / samples = fps / stride);
        # latent frame k stands at pixel frame k x temporal_factor (a causal VAE's first latent is frame 0)
        fps = video.shape[2] * self.ctx.cfg.data.audio.sample_rate / wave.shape[-1]
        video_rate = fps / rt.ae.temporal_factor
        patch = self.spec.patch_size(self.ctx.cfg.model)

        def forward_av(xt, t, at, ta):
            return self.spec.forward_av(model, xt, t, at, ta, t5, clip, video_rate, cond)

        has_audio = batch.get("has_audio")
        flow_cfg = self.ctx.cfg.flow
        losses = av_flow_loss(forward_av, x0, a0, flags, has_audio, flow_cfg, patch, gen, rt.autocast(), device_gen)
        observed = {}
        for m, (value, n) in losses.items():  # over the ranks: a modality's mean over its samples everywhere
            count = engine.all_reduce_mean(float(n))
            observed[m] = engine.all_reduce_mean(float(value.detach()) * n) / count if count > 0 else None
            if observed[m] is not None:
                self._window[m].append(observed[m])
        loss = self.balance.combine(losses, observed)
        scale = engine.sp.loss_scale if engine.sp else 1.0
        engine.backward(model, loss * scale / stage.grad_accum, sync=last)
        per_sample = (x0.shape[2] // patch[0]) * (x0.shape[3] // patch[1]) * (x0.shape[4] // patch[2])
        audio_tokens = a0.shape[2]
        flops = self.spec.flops(self.ctx.cfg.model, per_sample, t5.shape[1], self.image_condition, audio_tokens)
        plain = sum(self.balance.weights[m] * losses[m][0].detach() for m in losses)  # what the loop logs as loss
        return plain, x0.shape[0] * (per_sample + audio_tokens), flops.train * x0.shape[0]

    def take_metrics(self) -> dict[str, float]:
        out = {f"loss_{m}": sum(v) / len(v) for m, v in self._window.items() if v}
        out.update({f"loss_scale_{m}": s for m, s in self.balance.scales({}).items()})
        self._window = {"video": [], "audio": []}
        return out

    # -- evaluation: sampling with sound (t2av and v2a), scored for sound too with eval.kind=shapes ---------
    evaluate_stage = staticmethod(evaluate_av_stage)

    # -- checkpoint state beyond the model -----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"balance": self.balance.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.balance.load_state_dict(state.get("balance", {}))
