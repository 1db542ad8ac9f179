"""`parallel=deepspeed_zero2` / `deepspeed_zero3`: DeepSpeed's ZeRO around the model and a torch optimizer.

ZeRO-2 splits optimizer state and gradients over the ranks (every rank keeps the full weights);
ZeRO-3 also splits the weights and gathers each module's weights as it runs. The engine builds the
DeepSpeed config from `parallel` and the stage (precision, clipping); `parallel.options` is merged
into it last, so any DeepSpeed setting can be given (e.g. `zero_optimization.offload_optimizer`).

The optimizer is the framework's torch AdamW handed to DeepSpeed as a client optimizer, so the
learning-rate schedule and optimizer settings are the same as on every other engine. Gradient
accumulation stays with the trainer: DeepSpeed is told where each step's last micro-batch is.

Checkpoints: the weights go out gathered (full fp32, `model.safetensors`, readable by `osl-export`
and by every engine); the optimizer state is DeepSpeed's own checkpoint (`optim_deepspeed/`), which
resumes on the same number of ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opensora_lite.checkpoint.dcp import require_optimizer_state
from opensora_lite.checkpoint.files import clean_key
from opensora_lite.errors import CheckpointError
from opensora_lite.layout import OPTIM_DEEPSPEED
from opensora_lite.models.loading import FIT_HINT, LoadReport
from opensora_lite.parallel.engine import Blocks, Engine, MakeOptimizer

_TAG = "state"
_LAYOUT = "layout.json"


# DeepSpeed's CPU shared-memory all-reduce op, which its communication layer JIT-compiles at start-up
SHM_COMM_OP = "deepspeed_shm_comm"


def skip_shm_comm_build() -> None:
    """Keep DeepSpeed from compiling SHM_COMM_OP when its communication layer starts.

    On CPUs deepspeed.init_distributed loads that C++ op on every rank, JIT-compiling it on a machine's
    first start (deepspeed/comm/torch.py, build_shm_op), although only deepspeed.comm.inference_all_reduce
    uses it (AutoTP and inference layers): the ZeRO collectives these engines run go through
    torch.distributed. The first start then compiles silently for 1-2 minutes on 2 cores and needs a C++
    compiler and ninja. Every rank passes through torch's lock file in TORCH_EXTENSIONS_DIR/deepspeed_shm_comm;
    a rank killed while it holds the lock (the launcher's SIGTERM when another rank fails, a time limit)
    leaves it behind, and every later DeepSpeed start on the machine waits for it forever. DeepSpeed asks
    deepspeed.ops.__compatible_ops__ before building: an op marked incompatible there is not built, and
    inference_all_reduce falls back to torch.distributed's all_reduce. (GPU accelerators have no such op.)
    """
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)  # DeepSpeed probes it on first access
    if isinstance(compatible, dict):
        compatible[SHM_COMM_OP] = False


def merge(base: dict, extra: dict) -> dict:
    """base with extra's keys set, nested dicts merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DeepSpeedEngine(Engine):
    needs_process_group = True

    def __init__(self, cfg, device_preference: str):
        # imported before the process group exists: deepspeed.comm's TorchBackend.barrier and monitored_barrier
        # default to `group=torch.distributed.GroupMember.WORLD`, evaluated on import, and imported after
        # init_process_group they would hold the default group for the life of the process
        import deepspeed

        super().__init__(cfg, device_preference)
        self._models: list[weakref.ref] = []  # what prepare() returned: destroyed in shutdown()
        self.stage = 3 if cfg.engine == "deepspeed_zero3" else 2
        for key, value in (("RANK", self.rank), ("WORLD_SIZE", self.world_size), ("LOCAL_RANK", self.local_rank)):
            os.environ.setdefault(key, str(value))  # DeepSpeed reads these (srun and single-process launches lack them)
        skip_shm_comm_build()
        # the process group exists already (Engine): DeepSpeed's communication layer attaches to it
        deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else "gloo")

    @property
    def shards_parameters(self) -> bool:
        return self.stage == 3 and self.world_size > 1

    @property
    def builds_on_meta(self) -> bool:
        """parallel.meta_init on ZeRO-3 with several ranks: the trainer builds the model inside
        model_context(), where each parameter is split over the ranks as soon as its module is built, so
        no rank ever holds the whole model; materialize() then gives it its values."""
        return self.cfg.meta_init and self.shards_parameters

    def model_context(self):
        import deepspeed

        if not self.builds_on_meta:
            return super().model_context()
        return deepspeed.zero.Init(config_dict_or_path=self.ds_config(0.0))  # (its dtype and ZeRO settings)

    def materialize(self, model, spec, weights: Path | None, seed: int) -> LoadReport:
        """Values for a model built partitioned and prepared: parameter by parameter, gathered, written
        on rank 0 (from `weights`: read one memory-mapped tensor at a time by the model spec's lazy
        reader, or a DCP folder that rank 0 reads whole; else, and for keys the weights may lack
        (spec.optional_keys: inputs added on purpose), the from-scratch init replayed from `seed` by
        spec.initial_tensors), and split again. Then the optimizer's
        fp32 master partitions are refreshed from them: DeepSpeed made those in prepare(), from the
        placeholders. From the same seed and weights, bitwise the values of today's build."""
        import deepspeed

        from opensora_lite.checkpoint.files import dcp_shapes, is_dcp_folder

        params = {clean_key(n): p for n, p in self.unwrap(model).named_parameters()}
        report = LoadReport(str(weights) if weights else "initialised from scratch")
        shapes: dict[str, tuple[int, ...]] = {}
        read = None
        if weights is not None and is_dcp_folder(weights):
            shapes = dcp_shapes(weights)
            if self.is_main:
                read = spec.read_weights(weights)[0].__getitem__
        elif weights is not None:
            source = spec.lazy_weights(weights)
            report.source = f"{weights} ({source.format}, one tensor at a time)"
            shapes, read = {k: source.shape(k) for k in source.keys()}, source.read
        for key, shape in shapes.items():
            if key in params and shape != tuple(params[key].ds_shape):
                raise CheckpointError(
                    f"{weights}: {key} is {shape}, the model's {tuple(params[key].ds_shape)} {FIT_HINT}"
                )
        found = [k for k in params if k in shapes]
        report.unexpected = sorted(shapes.keys() - params.keys())
        report.missing = sorted(params.keys() - shapes.keys()) if weights is not None else []
        fatal = [k for k in report.missing if not k.startswith(spec.optional_keys())]
        if fatal:
            raise CheckpointError(f"{weights}: {len(fatal)} model tensors are missing, e.g. {fatal[:3]}")

        def write(key: str, value: Callable[[], torch.Tensor]) -> None:  # every rank, in one order: collective
            with deepspeed.zero.GatheredParameters([params[key]], modifier_rank=0):
                if self.is_main:
                    params[key].copy_(value())

        with torch.no_grad():
            for key in found:
                write(key, lambda key=key: read(key))
            todo = set(report.missing) if weights is not None else set(params)
            if todo:
                torch.manual_seed(seed)  # the draws of the CPU build, replayed one tensor at a time
                for key, value in spec.initial_tensors(self.unwrap(model), todo):
                    write(key, lambda value=value: value)
        model.optimizer.refresh_fp32_params()
        report.loaded = len(found)
        return report

    def ds_config(self, grad_clip: float) -> dict:
        config = {
            # the trainer feeds micro-batches and marks accumulation boundaries itself
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": grad_clip,
            "zero_optimization": {"stage": self.stage, "overlap_comm": self.device.type == "cuda"},
            "bf16": {"enabled": self.compute_dtype() == "bf16"},
            "zero_allow_untested_optimizer": True,  # torch AdamW as the client optimizer
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }
        return merge(config, dict(self.cfg.options))

    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer, grad_clip: float, blocks: Blocks | None = None):
        import deepspeed

        model = self.wrap(model, blocks or {})
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad])
        ds_model, *_ = deepspeed.initialize(
            model=model, optimizer=opt, config=self.ds_config(grad_clip), dist_init_required=False
        )
        self._models.append(weakref.ref(ds_model))
        return ds_model, opt

    def release(self, model: nn.Module) -> None:
        """destroy() removes ZeRO's hooks, without which the model, its optimizer state and partitions stay
        in memory through the next stages (reference cycles through autograd that no collection frees)."""
        if hasattr(model, "destroy"):
            model.destroy()
        self._models = [ref for ref in self._models if ref() is not None and ref() is not model]
        _drop_zero3_references()

    def _destroy_groups(self) -> None:
        """DeepSpeed's teardown: each model's destroy() removes ZeRO's gradient and module hooks (they hold
        the model, its optimizer and their groups in reference cycles through autograd, which the garbage
        collector cannot see, so a finished stage's model is never freed without it); then
        deepspeed.comm.destroy_process_group destroys every group and drops DeepSpeed's own references
        (groups._WORLD_GROUP, its copy of the world group, which ZeRO uses)."""
        import deepspeed.comm

        for ref in self._models:
            model = ref()
            if model is not None and hasattr(model, "destroy"):
                model.destroy()
        self._models.clear()
        _drop_zero3_references()
        deepspeed.comm.destroy_process_group()
        groups = sys.modules.get("deepspeed.utils.groups")
        if getattr(groups, "_WORLD_GROUP", None) is not None:  # releases that do not drop it themselves
            groups._WORLD_GROUP = None

    def backward(self, model, loss: torch.Tensor, sync: bool = True) -> None:
        model.set_gradient_accumulation_boundary(sync)
        model.backward(loss)

    def step(self, model, opt) -> float:
        model.step()  # clips (gradient_clipping), updates and zeroes the gradients
        norm = model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        raise NotImplementedError("DeepSpeed clips inside step() (gradient_clipping in its config)")

    def unwrap(self, model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)

    def full_state_dict(self, model) -> dict[str, torch.Tensor]:
        """Full fp32 weights on rank 0: ZeRO-3 gathers each parameter in turn; ZeRO-2 reads the fp32
        master copy where DeepSpeed keeps one (bf16 training), else the module's own full weights."""
        return self.gather_weights(model, self.full_param)

    def full_param(self, p: nn.Parameter) -> torch.Tensor | None:
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        if self.stage == 3:
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                return p.detach().float().clone()
        return safe_get_full_fp32_param(p) if p.requires_grad else None

    def save_optimizer(self, folder: Path, model, opt) -> None:
        target = folder / OPTIM_DEEPSPEED
        # frozen weights (a LoRA stage's base) come from the stage's init, not from the checkpoint
        model.save_checkpoint(str(target), tag=_TAG, save_latest=False, exclude_frozen_parameters=_frozen(model))
        if self.is_main:
            layout = {"engine": self.cfg.engine, "world_size": self.world_size}
            (target / _LAYOUT).write_text(json.dumps(layout))

    def load_optimizer(self, folder: Path, model, opt) -> None:
        require_optimizer_state(folder, OPTIM_DEEPSPEED, self.cfg.engine)
        source = folder / OPTIM_DEEPSPEED
        layout = json.loads((source / _LAYOUT).read_text())
        if layout["world_size"] != self.world_size or layout["engine"] != self.cfg.engine:
            raise CheckpointError(
                f"{source} was written by parallel={layout['engine']} on {layout['world_size']} ranks; DeepSpeed "
                f"optimizer state resumes only on the same engine and number of ranks (this run: "
                f"{self.cfg.engine} on {self.world_size}). To change either, start a new stage from the "
                "checkpoint's weights (stage.init=<checkpoint>)"
            )
        model.load_checkpoint(
            str(source),
            tag=_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
            load_module_strict=not _frozen(model),
        )


def _drop_zero3_references() -> None:
    """ZeRO-3 keeps each model it wrapped in module-level state that destroy() leaves and that has no public
    way to clear (DeepSpeed 0.19): parameter_offload.FWD_MODULE_STACK keeps the top module (pushed when the
    model is wrapped, never popped), and PartitionedParameterCoordinator.__params_to_release's lru_cache
    keeps every coordinator and module it saw. Their parameters hold the process groups. Called when the
    groups are destroyed, so no ZeRO-3 model of this process runs again; other versions may lack either."""
    offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
    stack = getattr(offload, "FWD_MODULE_STACK", None)
    if isinstance(stack, list):
        stack.clear()
    coordinator = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
    cls = getattr(coordinator, "PartitionedParameterCoordinator", None)
    fn = vars(cls).get("_PartitionedParameterCoordinator__params_to_release") if cls is not None else None
    # the lru_cache sits inside DeepSpeed's instrument_w_nvtx wrapper, which does not set __wrapped__
    candidates = [fn]
    for cell in getattr(fn, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            candidates.append(cell.cell_contents)
    for candidate in candidates:
        if hasattr(candidate, "cache_clear"):
            candidate.cache_clear()


def _frozen(model: nn.Module) -> bool:
    return any(not p.requires_grad for p in model.parameters())
