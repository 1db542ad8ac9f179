"""The engine interface the trainer talks to, and process-group set-up.

An engine owns the distributed context (ranks, device, groups) and wraps the model from outside:
sharding or replication, activation checkpointing, compile. The trainer calls only these methods,
so engines are swappable by `parallel.engine`.
"""

from __future__ import annotations

import datetime
import os
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.models.flux_weights import clean_key, single_process_dcp, write_safetensors
from opensora_lite.train.state import MODEL_FILE, OPTIM_DCP


def launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun, or from srun when torchrun is not used."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class Engine(ABC):
    """Distributed context + model wrapping. Subclasses: LocalEngine (single, ddp), FSDP2Engine."""

    def __init__(self, cfg: ParallelConfig, device_preference: str):
        self.cfg = cfg
        self.rank, self.world_size, self.local_rank = launch_env()
        self.device = pick_device(device_preference, self.local_rank)
        if self.world_size > 1 and not dist.is_initialized():
            backend = cfg.backend if cfg.backend != "auto" else ("nccl" if self.device.type == "cuda" else "gloo")
            if "MASTER_ADDR" not in os.environ:  # srun without torchrun: all tasks on one node by default
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(
                backend,
                rank=self.rank,
                world_size=self.world_size,
                timeout=datetime.timedelta(seconds=cfg.timeout_s),
            )

        self.sp = self._sequence_parallel_groups()

    def _sequence_parallel_groups(self):
        """Consecutive ranks form SP groups of parallel.sp_size; data parallelism runs across groups."""
        size = self.cfg.sp_size
        if size == 1:
            return None
        from opensora_lite.config.validate import ConfigError
        from opensora_lite.parallel.sequence import SPContext

        if self.world_size % size:
            raise ConfigError("parallel.sp_size", f"{size} does not divide the {self.world_size} processes")
        mine = None
        for start in range(0, self.world_size, size):  # every rank creates every group
            group = dist.new_group(list(range(start, start + size)))
            if start <= self.rank < start + size:
                mine = group
        return SPContext(mine, size, self.rank % size)

    @property
    def dp_rank(self) -> int:
        """Which batch this rank trains on (ranks of one SP group share it)."""
        return self.rank // self.cfg.sp_size

    @property
    def dp_size(self) -> int:
        return self.world_size // self.cfg.sp_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @abstractmethod
    def wrap(self, model: nn.Module) -> nn.Module:
        """Prepare the model for training (AC, compile, replication/sharding)."""

    @abstractmethod
    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module inside whatever wrap() returned."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded grads: a DTensor

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Complete fp32 weights on CPU with BFL names (meaningful on rank 0; every rank must call it)."""
        sd = self.unwrap(model).state_dict()
        return {clean_key(k): v.detach().float().cpu().contiguous() for k, v in sd.items()}

    # -- checkpoints: every rank calls these; `folder` exists on every rank's view of the filesystem --
    def save_model(self, folder: Path, model: nn.Module) -> None:
        """The weights of a mid-stage checkpoint: full safetensors from rank 0 (sharded engines: DCP)."""
        weights = self.full_state_dict(model)
        if self.is_main:
            write_safetensors(weights, folder / MODEL_FILE)

    def save_optimizer(self, folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Optimizer state as a DCP folder keyed by parameter names: loads on any engine and world size."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = {"optim": get_optimizer_state_dict(model, opt)}
        with single_process_dcp():
            dcp.save(state, checkpoint_id=str(folder / OPTIM_DCP), no_dist=not dist.is_initialized())

    def load_optimizer(self, folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        state = {"optim": get_optimizer_state_dict(model, opt)}
        with single_process_dcp():
            dcp.load(state, checkpoint_id=str(folder / OPTIM_DCP), no_dist=not dist.is_initialized())
        set_optimizer_state_dict(model, opt, state["optim"])

    def all_reduce_mean(self, value: float) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def broadcast_object(self, obj):
        """Rank 0's value of obj on every rank (rank-0 decisions are made explicit)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's obj, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
