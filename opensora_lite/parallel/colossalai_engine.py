"""`parallel=colossalai_zero2` and `colossalai_hybrid_sp`: ColossalAI's Booster, Open-Sora 2.0's engine.

- colossalai_zero2: LowLevelZeroPlugin(stage=2) -- optimizer state and gradients split over the
  ranks, full weights on each (Open-Sora 2.0's 256px stages).
- colossalai_hybrid_sp: HybridParallelPlugin with ZeRO and a sequence-parallel axis of
  `parallel.sp_size` ranks (Open-Sora 2.0's 768px stage). Gradients are reduced over data x sequence
  ranks; the model's own Ulysses attention does the all-to-alls (parallel/sequence.py) on a group with
  the same members as the plugin's sequence axis (consecutive ranks), so no model-specific shardformer
  policy is needed.

Precision follows `parallel.param_dtype` (auto: bf16 on GPUs, fp32 on CPUs); HybridParallelPlugin's
ZeRO needs bf16 or fp16. Clipping is the plugin's (max_norm). `parallel.options` is passed to the
plugin last (e.g. `zero_stage`, `overlap_communication`, `cpu_offload`).

Checkpoints: weights are gathered from the fp32 master copies into `model.safetensors`; the optimizer
state is the Booster's sharded optimizer checkpoint (`optim_colossalai/`), which loads on any number of
ranks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opensora_lite.checkpoint.dcp import require_optimizer_state
from opensora_lite.errors import ConfigError
from opensora_lite.layout import OPTIM_COLOSSALAI
from opensora_lite.parallel.engine import Blocks, Engine, MakeOptimizer


def _no_shard_policy():
    """A shardformer policy that changes nothing: the model brings its own sequence parallelism."""
    from colossalai.shardformer.policies.base_policy import Policy

    class KeepModel(Policy):
        def config_sanity_check(self):
            pass

        def preprocess(self):
            return self.model

        def module_policy(self):
            return {}

        def postprocess(self):
            return self.model

    return KeepModel()


class ColossalAIEngine(Engine):
    needs_process_group = True

    def __init__(self, cfg, device_preference: str):
        super().__init__(cfg, device_preference)
        self.hybrid = cfg.engine == "colossalai_hybrid_sp"

    def plugin(self, grad_clip: float):
        from colossalai.booster.plugin import HybridParallelPlugin, LowLevelZeroPlugin

        common = {"precision": self.compute_dtype(), "max_norm": grad_clip}
        common["overlap_communication"] = self.device.type == "cuda"  # side streams exist only on GPUs
        if not self.hybrid:
            return LowLevelZeroPlugin(stage=2, **{**common, **self.cfg.options})
        sp = self.cfg.sp_size
        kwargs = dict(
            common,
            tp_size=1,
            pp_size=1,
            zero_stage=2,
            sp_size=sp if sp > 1 else None,
            enable_sequence_parallelism=sp > 1,
            sequence_parallelism_mode="all_to_all" if sp > 1 else None,
            custom_policy=_no_shard_policy(),
        )
        kwargs.update(self.cfg.options)
        if kwargs["zero_stage"] > 0 and kwargs["precision"] == "fp32":
            raise ConfigError(
                "parallel.param_dtype", "colossalai_hybrid_sp with ZeRO needs bf16 (or options.zero_stage=0 for fp32)"
            )
        return HybridParallelPlugin(**kwargs)

    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer, grad_clip: float, blocks: Blocks | None = None):
        from colossalai.booster import Booster

        model = self.wrap(model, blocks or {})
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad])
        plugin = self.plugin(grad_clip)
        if self.hybrid and self.sp is not None:
            ours, theirs = dist.get_process_group_ranks(self.sp.group), dist.get_process_group_ranks(plugin.sp_group)
            assert ours == theirs, f"sequence-parallel groups differ: ours {ours}, the plugin's {theirs}"
        self.booster = Booster(plugin=plugin)
        boosted, self.zero_opt, *_ = self.booster.boost(model, opt)
        return boosted, opt

    def backward(self, model, loss: torch.Tensor, sync: bool = True) -> None:
        self.booster.backward(loss, self.zero_opt)  # ZeRO-2 reduces every micro-batch's gradients into its shard

    def step(self, model, opt) -> float:
        self.zero_opt.step()  # clips to max_norm, updates the fp32 masters, copies them to the working weights
        norm = self.zero_opt.get_grad_norm()
        self.zero_opt.zero_grad()
        return float(norm) if norm is not None else float("nan")

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        raise NotImplementedError("ColossalAI clips inside step() (the plugin's max_norm)")

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.unwrap() if hasattr(model, "unwrap") else model

    def full_state_dict(self, model) -> dict[str, torch.Tensor]:
        """Full fp32 weights on rank 0, gathered from the ZeRO master shards (not the bf16 working copy)."""
        from colossalai.zero.low_level._utils import all_gather_into_flat_tensor_nd, get_nd_world_size

        opt = self.zero_opt
        masters = getattr(opt, "working_to_master_param", {})  # absent without ZeRO (hybrid zero_stage=0)

        def master_of(p: nn.Parameter) -> torch.Tensor | None:
            master = masters.get(id(p))
            if master is None:
                return None
            group = opt.param_to_pg[p]
            flat = torch.empty(master.numel() * get_nd_world_size(group), dtype=master.dtype, device=master.device)
            all_gather_into_flat_tensor_nd(flat, master.detach().flatten(), group)
            return flat[: p.numel()].view(p.shape)

        return self.gather_weights(model, master_of)

    def _destroy_groups(self) -> None:
        """The plugin (in the Booster) and the ZeRO optimizer hold the plugin's process groups."""
        self.__dict__.pop("booster", None)
        self.__dict__.pop("zero_opt", None)
        super()._destroy_groups()

    def save_optimizer(self, folder: Path, model, opt) -> None:
        self.booster.save_optimizer(self.zero_opt, str(folder / OPTIM_COLOSSALAI), shard=True)

    def load_optimizer(self, folder: Path, model, opt) -> None:
        require_optimizer_state(folder, OPTIM_COLOSSALAI, self.cfg.engine)
        self.booster.load_optimizer(self.zero_opt, str(folder / OPTIM_COLOSSALAI))
