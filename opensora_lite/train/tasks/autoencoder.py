"""What an autoencoder stage (stage.kind=autoencoder) computes; the trainer's loop runs it.

The trainer owns the plumbing (engine, checkpoints, loader state, preemption, metrics, tracking) for
both kinds of stage; this task gives the autoencoder stage's model (the configured autoencoder, made
trainable), its loss (L1 + perceptual + adaptive-weighted hinge PatchGAN, autoencoders/losses.py),
the discriminator's own update after each engine step, the discriminator's state for the checkpoint,
and the reconstruction evaluation (PSNR/SSIM on held-out clips + a contact sheet).

What it reconstructs is the stage's modality (stage.reconstruction.modality, reconstruction.py): the
video autoencoder on the clips, or the audio autoencoder on the log-mel of their sound. The modality
object gives the autoencoder, a step's input and the evaluation's scores and sheets; the loss, the
checkpoint and the loop are the same for both.

The discriminator is small and replicated on every rank (never sharded), a Companion (companion.py): its
gradients are averaged over ranks with one all-reduce, so every engine trains it alike. Its weights and
Adam state are a DCP folder of each mid-stage checkpoint (`discriminator_dcp/`).

Whether a step trains on single frames (`stage.reconstruction.image_fraction`) is drawn from
(run.seed, stage, step) alone: the same on every rank and after a resume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from opensora_lite.autoencoders.losses import (
    PatchDiscriminator3D,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    l1_loss,
    load_perceptual,
)
from opensora_lite.errors import CheckpointError, UserError
from opensora_lite.train.tasks.base import Figures, StageContext, Task
from opensora_lite.train.tasks.companion import Companion
from opensora_lite.train.tasks.reconstruction import reconstruction_for

log = logging.getLogger("opensora_lite")


class AutoencoderTask(Task):
    kind = "autoencoder"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        engine, cfg, stage, index = ctx.engine, ctx.cfg, ctx.stage, ctx.index
        self.engine, self.cfg, self.stage, self.index = engine, cfg, stage, index
        self.r = r = stage.reconstruction
        self.modality = reconstruction_for(cfg, r.modality, engine.device)
        self.perceptual = load_perceptual(r.vgg_path).to(engine.device) if r.perceptual_weight > 0 else None
        self.disc = self.companion = None
        if r.disc_weight > 0:
            with torch.random.fork_rng(devices=[]):  # its own seed: the autoencoder's init is unchanged by it
                torch.manual_seed(cfg.run.seed * 1000 + index + 500)
                self.disc = PatchDiscriminator3D(r.disc_channels, r.disc_layers).to(engine.device)
            o = stage.optim
            self.companion = Companion("discriminator", self.disc, r.disc_lr, o.betas, o.eps, o.grad_clip)
        self.figures = Figures()

    # -- the model ---------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The modality's configured autoencoder with every parameter trainable; its forward(x) reconstructs
        and reconstruct(x) gives (reconstruction, raw latents)."""
        ae = self.modality.build()
        if not any(True for _ in ae.parameters()) or not hasattr(ae, "reconstruct"):
            raise UserError(
                f"{type(ae).__name__} has nothing to train (no parameters or no reconstruct(x) -> "
                "(reconstruction, latents)); an autoencoder stage trains e.g. dc_ae or mel_ae"
            )
        return ae.requires_grad_(True)

    def eval_model(self, weights: dict) -> nn.Module:
        """A local autoencoder holding `weights` (gathered or EMA), for evaluation on rank 0."""
        ae = self.modality.build()
        ae.load_state_dict(weights)
        return ae.to(self.engine.device)

    def load_weights(self, model: nn.Module, path: Path | None, initial: bool) -> None:
        """Weights of a checkpoint or the stage's init (a safetensors file or a DCP folder) into the
        unwrapped model; none: the autoencoder config's own (autoencoder.path or its seeded init)."""
        from opensora_lite.checkpoint.files import read_tensors

        ctx = self.ctx
        if path is None:
            log.info("[%s] autoencoder weights from the autoencoder config", ctx.name)
            return
        state, _ = read_tensors(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: not this autoencoder's weights ({len(missing)} missing, e.g. {missing[:2]})"
            )
        if initial:
            log.info("[%s] autoencoder weights from %s", ctx.name, path)
            ctx.rt.tracker.event("init", ctx.step_offset, ctx.name, source=str(path), missing=[], unexpected=[])

    # -- one step ----------------------------------------------------------------------------------
    def images_at(self, step: int) -> bool:
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + self.index * 7919 + step)
        return float(torch.rand((), generator=g)) < self.r.image_fraction

    def disc_on(self, step: int) -> bool:
        return self.disc is not None and step >= self.r.disc_start

    def micro_step(
        self, model, batch: dict, gen, step: int, last: bool, device_gen=None
    ) -> tuple[torch.Tensor, int, float]:
        """One forward + backward of the autoencoder (and the discriminator's, once it trains); `step` is
        0-based. Returns the loss, the pixels and 0 FLOPs (not counted for autoencoders)."""
        r, engine = self.r, self.engine
        video = self.modality.inputs(batch, self.images_at(step))  # (a log-mel for the audio autoencoder)
        out = model(video)
        if out.shape != video.shape:
            raise UserError(
                f"the autoencoder reconstructs {tuple(video.shape)} as {tuple(out.shape)}: its forward must "
                "return the input's shape"
            )
        recon = out
        l1 = l1_loss(recon, video)
        nll = r.l1_weight * l1
        parts = {"l1": float(l1.detach())}
        if self.perceptual is not None:
            p = self.perceptual(recon, video)
            nll = nll + r.perceptual_weight * p
            parts["perceptual"] = float(p.detach())
        loss = nll
        disc = self.disc_on(step)
        if disc:
            self.disc.requires_grad_(False)  # the generator's term: no gradients into the discriminator
            g = hinge_g_loss(self.disc(recon))
            w = adaptive_weight(
                lambda x: self._nll(x, video), lambda x: hinge_g_loss(self.disc(x)), recon, r.disc_weight
            )
            self.disc.requires_grad_(True)
            loss = nll + w * g
            parts.update(g_loss=float(g.detach()), d_weight=float(w))
        engine.backward(model, loss / self.stage.grad_accum, sync=last)
        if disc:
            d = hinge_d_loss(self.disc(video), self.disc(recon.detach()))
            (d / self.stage.grad_accum).backward()
            parts["d_loss"] = float(d.detach())
        self.figures.add(parts, 1 / self.stage.grad_accum)
        return loss.detach(), video[:, 0].numel(), 0.0

    def _nll(self, recon, video):
        """The reconstruction loss (L1 + perceptual, weighted)."""
        out = self.r.l1_weight * l1_loss(recon, video)
        if self.perceptual is not None:
            out = out + self.r.perceptual_weight * self.perceptual(recon, video)
        return out

    def after_step(self, step: int) -> None:
        """The discriminator's update, after the engine stepped the autoencoder (`step` 0-based)."""
        if self.disc_on(step):
            self.companion.step(self.engine.world_size)

    def take_metrics(self) -> dict[str, float]:
        """The loss parts since the last call, averaged over steps and ranks."""
        return self.figures.take(self.engine)

    # -- checkpoint state --------------------------------------------------------------------------
    def companions(self) -> list:
        return [] if self.companion is None else [self.companion]

    # -- evaluation --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, folder: Path, validation: bool = False) -> tuple[dict, list, dict]:
        """The modality's scores (video: PSNR/SSIM) over `eval.val_batches` batches of the held-out
        `eval.val_shards` (data.shards when unset), read in a fixed order; a contact sheet of the first batch
        (inputs above reconstructions); the raw latents' mean and std."""
        from opensora_lite.data.cache import bucket_table
        from opensora_lite.data.loader import BucketedVideoStream, expand_shards

        cfg = self.cfg
        stream = BucketedVideoStream(
            expand_shards(cfg.eval.val_shards or cfg.data.shards),
            bucket_table(cfg, self.stage),
            cfg.data.target_fps,
            seed=cfg.run.seed,
            shuffle_buffer=1,
            caption_key=cfg.data.caption_key,
            caption_template=cfg.data.caption_template,
            audio=self.modality.stream_audio(),
        )
        batches, scores, sheets = iter(stream), {}, {}
        moments = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares of the raw latents
        model.eval()
        for i in range(cfg.eval.val_batches):
            x = self.modality.inputs(next(batches), False)
            recon, latents = model.reconstruct(x)
            latents = latents.double()
            moments += torch.stack([torch.tensor(latents.numel()), latents.sum(), latents.square().sum()]).cpu()
            for k, v in self.modality.scores(recon, x).items():
                scores[k] = scores.get(k, 0.0) + v / cfg.eval.val_batches
            if i == 0:
                sheets.update(self.modality.sheets(folder, x, recon, model))
        model.train()
        # the latents' statistics: a diffusion stage on these weights (stage.autoencoder: stage:<name>) scales
        # its latents to unit variance with them, as Open-Sora's 0.493 does for the released DC-AE
        count, total, squares = moments.tolist()
        mean = total / count
        scores["latent_mean"], scores["latent_std"] = mean, max(squares / count - mean * mean, 0.0) ** 0.5
        return scores, [], sheets
