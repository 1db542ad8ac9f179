"""Memory per GPU of a training step, for every engine, and the levers when a bucket does not fit.

Static: parameters, gradients and AdamW state (two fp32 moments) in the engine's layout:
replicated (single, ddp: fp32 weights and gradients, bf16 copies cached by autocast on a GPU), ZeRO-2
(deepspeed_zero2, colossalai_zero2, colossalai_hybrid_sp: full compute-dtype weights, fp32 master
weights, gradients and moments split over the ranks, plus a gradient bucket), ZeRO-3 / FSDP2 (all
of it split over the shard group: the world, or world / hsdp_replicas with HSDP, plus the gathered
weights and gradients of two blocks). Activations: what autograd keeps per token and block (counted
with saved-tensor hooks on the real blocks, tests/test_plan.py checks the coefficients), a
checkpointed block keeping only its input, and one block's worth again while backward recomputes
it. Frozen text encoders and the autoencoder encoder are resident on the GPU unless parked or
replaced by a latent cache. Headroom is left for the caching allocator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch

from opensora_lite.config.schema import AutoencoderConfig, TextEncoderConfig, TextModelConfig
from opensora_lite.data.buckets import Bucket
from opensora_lite.models.spec import spec_for
from opensora_lite.plan.cost import DISTILL_BRANCHES, audio_tokens, video_tokens
from opensora_lite.plan.stages import StageSetup
from opensora_lite.registry import ENGINES

GIB = 2.0**30
ADAM_BYTES = 8  # exp_avg + exp_avg_sq in fp32
# Saved activations per token and hidden unit of each block group: the model spec's (ModelSpec.activations).
# Backward holds gradients of a block's intermediates beside its saved tensors: measured on CPU
# (tests/test_plan.py) as about this many of the largest block's activations at the peak.
BACKWARD_BLOCKS = 2.0
# A no-grad forward's working set per sample, as a share of a training block's saved activations (distill)
TEACHER_WORKING = 0.5
ZERO2_BUCKET_GIB = 1.0  # gradient bucket of the ZeRO-2 engines (reduce_bucket_size order)
# Parameters of the frozen parts where no config can be built (datasheet sizes).
TEXT_PARAMS = {4096: 4.762e9, 768: 123.1e6}  # T5-v1.1-XXL encoder, CLIP-L text tower (by output width)
AE_ENCODER_PARAMS = {"pixel": 0.0, "hunyuan": 100e6, "hunyuan15": 200e6, "wan": 55e6, "wan22": 300e6, "ltx": 200e6}


@lru_cache(maxsize=32)
def _param_counts(family: str, cfg_items: tuple, image_condition: bool) -> tuple[int, int]:
    spec = spec_for(family)
    cfg = spec.config_class(**{k: _thawed(v) for k, v in cfg_items})
    with torch.device("meta"):
        model = spec.build(cfg, image_condition=image_condition)
    total = sum(p.numel() for p in model.parameters())
    blocks = [block for chain in spec.blocks(model).values() for block in chain]
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    return total, largest


def dit_params(cfg, image_condition: bool) -> tuple[int, int]:
    """(all parameters, parameters of the largest block) of the model, counted on the meta device."""
    return _param_counts(spec_for(cfg).family, _frozen(cfg)[1], image_condition)


def _frozen(value):
    """A config as a hashable key (for the cache): lists as tuples, a nested dataclass (model.audio) as
    (its class, its items)."""
    if dataclasses.is_dataclass(value):
        return (type(value), tuple((k, _frozen(v)) for k, v in vars(value).items()))
    return tuple(value) if isinstance(value, list) else value


def _thawed(value):
    if isinstance(value, tuple) and value and isinstance(value[0], type):
        return value[0](**{k: _thawed(v) for k, v in value[1]})
    return list(value) if isinstance(value, tuple) else value


def _text_params(kind: str, cfg: TextModelConfig) -> float:
    if cfg.tiny:
        import transformers as tf

        with torch.device("meta"):
            if kind == "t5":
                model = tf.T5EncoderModel(tf.T5Config(**cfg.tiny))
            else:
                model = tf.CLIPTextModel(tf.CLIPTextConfig(pad_token_id=0, eos_token_id=1, bos_token_id=0, **cfg.tiny))
        return float(sum(p.numel() for p in model.parameters()))
    return TEXT_PARAMS.get(cfg.dim, 0.0)


def _dtype_bytes(name: str) -> int:
    return 4 if name == "fp32" else 2


def encoder_bytes(te: TextEncoderConfig, ae: AutoencoderConfig) -> tuple[float, float]:
    """(text encoders, autoencoder encoder) weights in bytes."""
    text = _text_params("t5", te.t5) * _dtype_bytes(te.t5.dtype) + _text_params("clip", te.clip) * _dtype_bytes(
        te.clip.dtype
    )
    if ae.kind == "dc_ae":
        from opensora_lite.autoencoders.dc_ae import VideoDCAE

        model = VideoDCAE(replace(ae, path=None), device="meta")
        enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder"))
        full = sum(p.numel() for p in model.parameters())
        ae_params = float(enc if ae.offload_decoder else full)
    else:
        ae_params = AE_ENCODER_PARAMS.get(ae.kind, 0.0) * (1 if ae.offload_decoder else 2.2)
    return text, ae_params * _dtype_bytes(ae.dtype)


@dataclass
class Memory:
    """Bytes per GPU for one bucket."""

    bucket: Bucket
    params: float
    grads: float
    optimizer: float
    working: float  # gathered weights/gradients (ZeRO-3), gradient buckets (ZeRO-2)
    activations: float
    encoders: float  # frozen text encoders + autoencoder encoder while the step runs
    reserved: float  # CUDA context, communication buffers
    capacity: float  # usable bytes: GPU memory less the allocator headroom
    levers: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        static = self.params + self.grads + self.optimizer + self.working
        return static + self.activations + self.encoders + self.reserved

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


def static_bytes(setup: StageSetup, compute: str, on_gpu: bool) -> tuple[float, float, float, float]:
    """(params, grads, optimizer, working) bytes per GPU for the stage's engine; a distill stage adds its
    teacher and critic (distill_bytes)."""
    params, grads, opt, working = _engine_bytes(setup, compute, on_gpu)
    if setup.stage.kind == "distill":
        total, _ = dit_params(setup.model, setup.image_condition)
        teacher, critic, critic_grads, critic_opt = distill_bytes(setup, total)
        params, grads, opt = params + teacher + critic, grads + critic_grads, opt + critic_opt
    return params, grads, opt, working


def distill_bytes(setup: StageSetup, total: float) -> tuple[float, float, float, float]:
    """(teacher, critic weights, critic gradients, critic AdamW state) per GPU of a distill stage
    (train/tasks/distill.py), in fp32: 20 bytes a parameter, replicated on every rank, except under fsdp2,
    which shards both over its shard group as it does the student (Engine.shard_companion)."""
    shards = _fsdp2_shards(setup) if setup.parallel.engine == "fsdp2" else 1
    return 4.0 * total / shards, 4.0 * total / shards, 4.0 * total / shards, ADAM_BYTES * total / shards


def _fsdp2_shards(setup: StageSetup) -> int:
    """The ranks each fsdp2 parameter is split over (a node's under HSDP)."""
    return max(1, setup.gpus // max(1, setup.parallel.hsdp_replicas))


def _engine_bytes(setup: StageSetup, compute: str, on_gpu: bool) -> tuple[float, float, float, float]:
    par = setup.parallel
    total, block = dit_params(setup.model, setup.image_condition)
    c = _dtype_bytes(compute)
    engine = par.engine
    layout = ENGINES[engine].memory
    if layout == "replicated":
        params = 4.0 * total + (c * total if (on_gpu and c == 2) else 0.0)  # autocast caches bf16 copies
        grads = 4.0 * total
        working = 4.0 * total if engine == "ddp" and setup.gpus > 1 else 0.0  # DDP's gradient buckets
        return params, grads, ADAM_BYTES * total, working
    shards = setup.gpus
    if layout == "zero2":
        master = 4.0 * total / shards if c == 2 else 0.0
        return c * total + master, 4.0 * total / shards, ADAM_BYTES * total / shards, ZERO2_BUCKET_GIB * GIB
    if engine == "fsdp2":
        shards = _fsdp2_shards(setup)
    master = 2.0 * total / shards if engine == "deepspeed_zero3" and c == 2 else 0.0
    working = 2 * c * block + 4.0 * block  # this block and the prefetched one, and one block's fp32 gradients
    return 4.0 * total / shards + master, 4.0 * total / shards, ADAM_BYTES * total / shards, working


def activation_bytes(setup: StageSetup, bucket: Bucket, txt: int, compute: str, batch: int | None = None) -> float:
    """Saved activations of one GPU for a batch of this bucket, plus the backward working set."""
    m, par = setup.model, setup.parallel
    batch = bucket.batch_size if batch is None else batch
    # text is whole on every rank of an SP group; audio tokens are split like the video's (an estimate: the
    # audio blocks' profile is counted like a double block's at the audio width, not measured)
    tokens = txt + (video_tokens(setup, bucket) + audio_tokens(setup, bucket)) / par.sp_size
    act = setup.spec.activations(m)
    e = 4.0 if compute == "fp32" else 2.0
    extra = 0.0 if compute == "fp32" else act.fp32_under_bf16 * 4.0
    per_block = {g: v * e + extra for g, v in act.per_block.items()}
    recomputed = {g: min(par.ac_blocks.get(g, 0), n) for g, n in act.blocks.items()}
    kept = sum((n - recomputed[g]) * per_block[g] for g, n in act.blocks.items())
    kept += sum(recomputed.values()) * e  # a checkpointed block keeps its input
    largest = max((per_block[g] for g, n in act.blocks.items() if n), default=0.0)
    recompute = largest if sum(recomputed.values()) else 0.0  # one block rebuilt inside backward
    # a distill stage's teacher scores the student's samples while the student's graph is alive: a no-grad
    # forward over its guidance branches (text CFG 2, three-way with an image condition 3), whose working
    # set measured about half a training block's saved activations per sample (tests/test_plan.py)
    teacher = 0.0
    if setup.stage.kind == "distill":
        teacher = DISTILL_BRANCHES[setup.image_condition] * TEACHER_WORKING * largest
    return batch * tokens * act.width * (kept + act.outside * e + recompute + BACKWARD_BLOCKS * largest + teacher)


def text_placement(plan_value: str, data_kind: str) -> str:
    if plan_value == "auto":
        return "cached" if data_kind == "cached" else "resident"
    return plan_value


def bucket_memory(
    setup: StageSetup,
    bucket: Bucket,
    txt: int,
    compute: str,
    on_gpu: bool,
    te: TextEncoderConfig,
    placement: str,
    capacity: float,
    reserved: float,
) -> Memory:
    params, grads, opt, working = static_bytes(setup, compute, on_gpu)
    act = activation_bytes(setup, bucket, txt, compute)
    text, ae = encoder_bytes(te, setup.autoencoder)
    if placement == "resident":
        enc = text + ae
    elif placement == "parked":  # they visit the GPU before the step, when no activations exist yet
        enc = max(0.0, text + ae - act)
    else:  # cached latents: neither runs during training
        enc = 0.0
    return Memory(bucket, params, grads, opt, working, act, enc, reserved, capacity)


def levers(setup: StageSetup, mem: Memory, txt: int, compute: str, on_gpu: bool, te, placement, reserved) -> list[str]:
    """What makes a bucket that does not fit fit: activation checkpointing, SP size, batch size, engine."""
    out = []

    def fits(s: StageSetup, batch: int | None = None) -> float | None:
        b = mem.bucket if batch is None else replace(mem.bucket, batch_size=batch)
        m = bucket_memory(s, b, txt, compute, on_gpu, te, placement, mem.capacity, reserved)
        return m.total if m.fits else None

    m, par = setup.model, setup.parallel
    counts = setup.block_counts()
    if any(par.ac_blocks.get(g, 0) < n for g, n in counts.items()):
        full = replace(setup, parallel=replace(par, ac_blocks=dict(counts)))
        if (t := fits(full)) is not None:
            out.append(f"activation checkpointing of every block ({t / GIB:.0f} GiB)")
    sp, heads = par.sp_size * 2, setup.spec.heads(m)
    sp_ok = setup.spec.capabilities.sequence_parallel and setup.stage.kind != "distill"  # (refused there: validate.py)
    while sp_ok and sp <= setup.gpus and heads % sp == 0 and setup.gpus % sp == 0:
        if (t := fits(replace(setup, parallel=replace(par, sp_size=sp)))) is not None:
            out.append(f"sp_size={sp} ({t / GIB:.0f} GiB)")
            break
        sp *= 2
    batch = mem.bucket.batch_size - 1
    while batch >= 1 and fits(setup, batch) is None:
        batch -= 1
    if batch >= 1:
        out.append(f"batch size <= {batch}")
    if ENGINES[par.engine].memory != "zero3":
        if (t := fits(replace(setup, parallel=replace(par, engine="fsdp2", hsdp_replicas=1)))) is not None:
            out.append(f"engine fsdp2 ({t / GIB:.0f} GiB)")
    if setup.stage.kind == "distill" and par.engine != "fsdp2":  # only fsdp2 shards the teacher and critic
        total, _ = dit_params(setup.model, setup.image_condition)
        fixed = sum(distill_bytes(setup, total)) / GIB
        out.append(
            f"the teacher and critic are replicated on every GPU under {par.engine} ({fixed:.0f} GiB): "
            "parallel=fsdp2 shards them"
        )
    return out or ["none of activation checkpointing, SP, batch 1 or FSDP suffices: a larger GPU"]
