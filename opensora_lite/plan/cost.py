"""Tokens, FLOPs, step time, GPU-days and cost of a stage, bucket by bucket (the model spec counts FLOPs).

A data-parallel rank draws one batch per step from one bucket. With a share p_b of the samples in
bucket b of batch size B_b, batches come from b with frequency q_b ~ p_b / B_b, so a rank sees
1 / sum(p_b / B_b) samples per step on average. A sequence-parallel group of sp_size GPUs shares one
batch. Step time is the model FLOPs per GPU-step over (peak x MFU), MFU counting model FLOPs only (as
the trainer's live metric does); the hardware FLOPs add the forward passes that activation
checkpointing recomputes.

A stage of kind audio_video also counts its audio tokens: each video window's sound (num_frames /
data.target_fps seconds, the window rule) through the stage's audio autoencoder, one token per latent
frame; they go through the audio stream's FLOPs (the spec's) and the tokens per step. A 1-frame bucket is
an image: no sound, no audio tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opensora_lite.autoencoders.audio import window_latent_frames
from opensora_lite.autoencoders.base import latent_frame_count
from opensora_lite.data.audio import window_samples
from opensora_lite.data.buckets import Bucket
from opensora_lite.diffusion.distill import step_flops
from opensora_lite.plan.mix import Mix
from opensora_lite.plan.stages import StageSetup

SECONDS_PER_DAY = 86400.0
# a distill stage's teacher: forwards per guided score, by whether the stage has an image condition (text
# CFG: 2; three-way guidance: 3, as the recipes sample I2V)
DISTILL_BRANCHES = {False: 2, True: 3}


def video_tokens(setup: StageSetup, bucket: Bucket) -> int:
    """Tokens of one sample after the autoencoder and patchifying."""
    ae, (pt, ph, pw) = setup.autoencoder, setup.model.patch_size
    frames = latent_frame_count(bucket.num_frames, ae.temporal_factor, ae.causal)
    s = ae.spatial_factor
    return max(1, frames // pt) * (bucket.height // (s * ph)) * (bucket.width // (s * pw))


def audio_tokens(setup: StageSetup, bucket: Bucket) -> int:
    """Audio tokens of one sample: the latent frames of its window's sound (0 without an audio stream, and
    for an image)."""
    if setup.audio is None or bucket.num_frames <= 1:
        return 0
    rate = setup.audio.mel.sample_rate
    return window_latent_frames(setup.audio, window_samples(0, bucket.num_frames, 1, setup.fps, rate)[1])


def recompute_flops(setup: StageSetup, img: int, txt: int, audio: int = 0) -> float:
    """Forward FLOPs activation checkpointing repeats in backward, per sample."""
    per_block = setup.spec.block_flops(setup.model, img, txt, audio)
    counts = setup.block_counts()
    return sum(per_block[g] * min(n, counts[g]) for g, n in setup.parallel.ac_blocks.items())


@dataclass
class BucketCost:
    bucket: Bucket
    share: float  # of the samples
    batch_share: float  # of the batches a rank draws
    tokens: int  # video tokens per sample
    text_tokens: int
    model_flops: float  # per sample, forward + backward
    hardware_flops: float  # per sample, with recomputation
    step_seconds: float = 0.0  # one GPU-step of this bucket alone
    audio_tokens: int = 0  # per sample (a stage of kind audio_video)

    @property
    def gpu_step_flops(self) -> float:
        return self.model_flops * self.bucket.batch_size


@dataclass
class StageCost:
    name: str
    gpus: int
    dp_size: int
    sp_size: int
    steps: int
    mfu: float
    peak_tflops: float
    price_per_gpu_hour: float
    buckets: list[BucketCost]
    samples_per_rank_step: float
    tokens_per_rank_step: float  # video + text (+ audio) tokens
    model_flops_per_gpu_step: float
    hardware_flops_per_gpu_step: float
    step_seconds: float
    dataset_clips: float | None
    reference_gpu_days: float | None = None
    reference_clips: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def samples_per_step(self) -> float:
        return self.samples_per_rank_step * self.dp_size

    @property
    def tokens_per_step(self) -> float:
        return self.tokens_per_rank_step * self.dp_size

    @property
    def gpu_days(self) -> float:
        return self.steps * self.step_seconds * self.gpus / SECONDS_PER_DAY

    @property
    def cost(self) -> float:
        return self.gpu_days * 24.0 * self.price_per_gpu_hour

    @property
    def clips_seen(self) -> float:
        return self.steps * self.samples_per_step

    @property
    def epochs(self) -> float | None:
        return self.clips_seen / self.dataset_clips if self.dataset_clips else None

    @property
    def implied_mfu(self) -> float | None:
        """The MFU a published GPU-days figure implies for this stage's FLOPs."""
        if not self.reference_gpu_days:
            return None
        flops = self.model_flops_per_gpu_step * self.steps * self.gpus
        return flops / (self.reference_gpu_days * SECONDS_PER_DAY * self.peak_tflops * 1e12)


def stage_cost(
    setup: StageSetup, mix: Mix, peak_tflops: float, price: float, dataset_clips: float | None, txt: int
) -> StageCost:
    sp = setup.parallel.sp_size
    rows = []
    for bucket, share in sorted(mix.items(), key=lambda kv: (-kv[0].height * kv[0].width, -kv[0].num_frames)):
        if share <= 0:
            continue
        img, aud = video_tokens(setup, bucket), audio_tokens(setup, bucket)
        count = setup.spec.flops(setup.model, img, txt, setup.image_condition, aud)
        model, recompute = count.train, recompute_flops(setup, img, txt, aud)
        if setup.stage.kind == "distill":  # the teacher's and critic's passes beside the student's
            d = setup.stage.distill
            simulated = (d.steps - 1) / 2 if d.backward_simulation else 0.0  # its step k drawn uniformly
            branches = DISTILL_BRANCHES[setup.image_condition]
            model = step_flops(count.forward, count.train, simulated, branches, d.critic_steps)
            recompute *= 1 + d.critic_steps  # the student's and the critic's trained passes recompute
        hardware = model + recompute
        rows.append(BucketCost(bucket, share, 0.0, img, txt, model, hardware, audio_tokens=aud))
    inv = sum(r.share / r.bucket.batch_size for r in rows)  # batches per sample
    per_sample_model = sum(r.share * r.model_flops for r in rows)
    per_sample_hw = sum(r.share * r.hardware_flops for r in rows)
    per_sample_tokens = sum(r.share * (r.tokens + r.text_tokens + r.audio_tokens) for r in rows)
    speed = peak_tflops * 1e12 * setup.mfu
    for r in rows:
        r.batch_share = r.share / r.bucket.batch_size / inv
        r.step_seconds = r.gpu_step_flops / sp / speed
    model_step = per_sample_model / inv / sp
    return StageCost(
        name=setup.name,
        gpus=setup.gpus,
        dp_size=setup.dp_size,
        sp_size=sp,
        steps=setup.steps,
        mfu=setup.mfu,
        peak_tflops=peak_tflops,
        price_per_gpu_hour=price,
        buckets=rows,
        samples_per_rank_step=1.0 / inv,
        tokens_per_rank_step=per_sample_tokens / inv,
        model_flops_per_gpu_step=model_step,
        hardware_flops_per_gpu_step=per_sample_hw / inv / sp,
        step_seconds=model_step / speed,
        dataset_clips=dataset_clips,
        reference_gpu_days=setup.reference_gpu_days,
        reference_clips=setup.reference_clips,
    )
