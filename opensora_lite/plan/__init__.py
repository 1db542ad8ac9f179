"""Planning a curriculum before it runs (`osl-plan`): cost per stage and bucket, memory per GPU, and
whether each bucket fits. Pure functions over the config; docs/plan.md explains the figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from opensora_lite.config.schema import PlanJobConfig
from opensora_lite.dtypes import matmul_precision
from opensora_lite.errors import ConfigError, UserError
from opensora_lite.plan.cost import StageCost, stage_cost
from opensora_lite.plan.hardware import GPU, resolve_gpu
from opensora_lite.plan.memory import GIB, Memory, bucket_memory, levers, text_placement
from opensora_lite.plan.mix import kinds_from_shards, mix_from_kinds, uniform_mix
from opensora_lite.plan.stages import stage_plans, stage_setups

MIXES = ("uniform", "given", "shards")
FORMATS = ("table", "markdown", "json")


@dataclass
class StagePlan:
    cost: StageCost
    memory: list[Memory]  # one per bucket, in the cost's bucket order
    mix_note: str
    engine: str
    ac: dict  # parallel.ac_blocks: blocks recomputed per group
    autoencoder: str

    @property
    def largest(self) -> Memory:
        return max(self.memory, key=lambda m: m.total)


@dataclass
class Plan:
    label: str
    gpu: GPU
    mfu_source: str
    stages: list[StagePlan]
    text_encoders: str = "resident"

    @property
    def gpu_days(self) -> float:
        return sum(s.cost.gpu_days for s in self.stages)

    @property
    def cost(self) -> float:
        return sum(s.cost.cost for s in self.stages)


def measured_mfu(path: str, peak_tflops: float) -> tuple[dict[str, float], float, str]:
    """The MFU a run measured (its metrics.jsonl), per stage and over all stages, each stage's first
    logged window (warm-up) left out where it has more, windows weighted by their step time. Where the
    run logged no MFU (CPU runs), its TFLOP/s per device over the plan's peak."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.is_file():
        raise ConfigError("plan.metrics", f"{path}: no metrics.jsonl there")
    by_stage: dict[str, list[dict]] = {}
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "tflops_per_device" in rec:
            by_stage.setdefault(str(rec.get("stage")), []).append(rec)
    if not by_stage:
        raise ConfigError("plan.metrics", f"{p}: no training records (tflops_per_device) in it")

    def mfu(rec: dict) -> float:
        return rec["mfu"] if "mfu" in rec else rec["tflops_per_device"] / peak_tflops

    def mean(records: list[dict]) -> float:  # weighted by time: the run's FLOPs over its time
        weights = [r.get("step_time_s", 1.0) for r in records]
        return sum(mfu(r) * w for r, w in zip(records, weights)) / sum(weights)

    per_stage = {}
    every = []
    for stage, records in by_stage.items():
        use = records[1:] or records
        per_stage[stage] = mean(use)
        every += use
    overall = mean(every)
    return per_stage, overall, f"measured in {p} (per stage; {overall:.1%} over {len(every)} windows)"


def build_plan(cfg: PlanJobConfig) -> Plan:
    plan = cfg.plan
    if plan.mix not in MIXES:
        raise ConfigError("plan.mix", f"{plan.mix!r}: choose one of {list(MIXES)}")
    if plan.format not in FORMATS:
        raise ConfigError("plan.format", f"{plan.format!r}: choose one of {list(FORMATS)}")
    if plan.text_encoders not in ("auto", "resident", "parked", "cached"):
        raise ConfigError("plan.text_encoders", f"{plan.text_encoders!r}: auto | resident | parked | cached")
    if not 0 <= plan.headroom < 1:
        raise ConfigError("plan.headroom", f"a fraction in [0, 1), got {plan.headroom}")
    compute = cfg.run.dtype
    on_gpu = cfg.run.device != "cpu"
    gpu = resolve_gpu(plan, matmul_precision(compute, cfg.run.tf32))
    mfu, source, measured = plan.mfu, f"assumed {plan.mfu:.0%}", {}
    if plan.metrics:
        measured, mfu, source = measured_mfu(plan.metrics, gpu.peak_tflops)
    dataset, kinds = plan.dataset_clips, list(plan.samples)
    if plan.mix == "shards":
        kinds, seen = kinds_from_shards(cfg.data.shards, plan.shard_records)
        if dataset is None and seen < plan.shard_records:
            dataset = float(seen)
    per_stage = stage_plans(cfg)
    if plan.mix == "given" and not kinds and not any(s.samples for s in per_stage.values()):
        raise ConfigError("plan.samples", "plan.mix=given needs clip kinds (plan.samples or plan.stages.<s>.samples)")
    txt = cfg.text_encoder.t5.max_length
    placement = text_placement(plan.text_encoders, cfg.data.kind)
    capacity = gpu.memory_gib * GIB * (1 - plan.headroom)
    reserved = plan.reserved_gib * GIB
    setups = stage_setups(cfg, mfu)
    own = [s.name for s in setups if s.name in per_stage and per_stage[s.name].mfu is not None]
    for setup in setups:  # a stage the run measured uses its own MFU (unless the plan sets one)
        if setup.name in measured and setup.name not in own:
            setup.mfu = measured[setup.name]
    if own and not plan.metrics:
        source = "set per stage" if len(own) == len(setups) else f"{source}, set per stage for {', '.join(own)}"
    stages = []
    for setup in setups:
        key = f"plan.stages.{setup.name}.samples" if setup.samples else "plan.samples"
        stage_kinds = setup.samples or kinds
        if plan.mix == "uniform" and not setup.samples:
            mix, note = uniform_mix(setup.table), "uniform over the bucket table"
        else:
            mix, skipped = mix_from_kinds(setup.table, stage_kinds, cfg.data.target_fps, key)
            note = f"{len(stage_kinds)} clip kinds ({'shard metadata' if plan.mix == 'shards' else 'given'})"
            if skipped > 0.001:
                note += f", {skipped:.0%} fit no bucket"
        cost = stage_cost(setup, mix, gpu.peak_tflops, plan.price_per_gpu_hour, dataset, txt)
        memory = []
        for row in cost.buckets:
            mem = bucket_memory(
                setup, row.bucket, txt, compute, on_gpu, cfg.text_encoder, placement, capacity, reserved
            )
            if not mem.fits:
                mem.levers = levers(setup, mem, txt, compute, on_gpu, cfg.text_encoder, placement, reserved)
            memory.append(mem)
        par = setup.parallel
        stages.append(StagePlan(cost, memory, note, par.engine, dict(par.ac_blocks), setup.autoencoder.kind))
    return Plan(plan.label or cfg.run.name, gpu, source, stages, placement)


__all__ = ["Plan", "StagePlan", "build_plan", "measured_mfu", "UserError"]
