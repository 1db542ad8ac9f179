"""What a stage computes, as task objects of the one loop (train/trainer.py): `diffusion` (the flow
objective on a model family behind its spec), `autoencoder` (reconstruction with a discriminator) and
`audio_video` (the flow objective on both streams of a model with sound, per-modality tasks and loss) and
`distill` (a few-step student of a trained model, DMD2).
A task gives the model, what a step computes, what its checkpoint holds beyond the model, and what an
evaluation samples; the loop owns the plumbing. `stage.kind` picks one (registry.STAGE_KINDS)."""

from __future__ import annotations

from opensora_lite.train.tasks.base import StageContext, Task


def build_task(ctx: StageContext) -> Task:
    """The task of the stage's kind."""
    if ctx.stage.kind == "autoencoder":
        from opensora_lite.train.tasks.autoencoder import AutoencoderTask

        return AutoencoderTask(ctx)
    if ctx.stage.kind == "distill":
        from opensora_lite.train.tasks.distill import DistillTask

        return DistillTask(ctx)
    if ctx.stage.kind == "audio_video":
        from opensora_lite.train.tasks.audio_video import AudioVideoTask

        return AudioVideoTask(ctx)
    from opensora_lite.train.tasks.diffusion import DiffusionTask

    return DiffusionTask(ctx)
