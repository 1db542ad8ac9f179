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

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opensora_lite.errors import CheckpointError
from opensora_lite.parallel.engine import Engine, MakeOptimizer, require_optimizer_state
from opensora_lite.train.state import OPTIM_DEEPSPEED

_TAG = "state"
_LAYOUT = "layout.json"


def merge(base: dict, extra: dict) -> dict:
    """base with extra's keys set, nested dicts merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DeepSpeedEngine(Engine):
    needs_process_group = True
    writes_async = False  # its own optimizer checkpoint format, written synchronously

    def __init__(self, cfg, device_preference: str):
        super().__init__(cfg, device_preference)
        import deepspeed

        self.stage = 3 if cfg.engine == "deepspeed_zero3" else 2
        for key, value in (("RANK", self.rank), ("WORLD_SIZE", self.world_size), ("LOCAL_RANK", self.local_rank)):
            os.environ.setdefault(key, str(value))  # DeepSpeed reads these (srun and single-process launches lack them)
        # the process group exists already (Engine): DeepSpeed's communication layer attaches to it
        deepspeed.init_distributed(dist_backend=dist.get_backend() if dist.is_initialized() else "gloo")

    @property
    def shards_parameters(self) -> bool:
        return self.stage == 3 and self.world_size > 1

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

    def prepare(self, model: nn.Module, make_optimizer: MakeOptimizer, grad_clip: float):
        import deepspeed

        model = self.wrap(model)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad])
        ds_model, *_ = deepspeed.initialize(
            model=model, optimizer=opt, config=self.ds_config(grad_clip), dist_init_required=False
        )
        return ds_model, opt

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
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        def full(p: nn.Parameter) -> torch.Tensor | None:
            if self.stage == 3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    return p.detach().float().clone()
            return safe_get_full_fp32_param(p) if p.requires_grad else None

        return self.gather_weights(model, full)

    def save_optimizer(self, folder: Path, model, opt) -> None:
        target = folder / OPTIM_DEEPSPEED
        model.save_checkpoint(str(target), tag=_TAG, save_latest=False)
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
            str(source), tag=_TAG, load_optimizer_states=True, load_lr_scheduler_states=False, load_module_strict=True
        )
