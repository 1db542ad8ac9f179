"""The engine interface the trainer talks to, and process-group set-up.

An engine owns the distributed context (ranks, device, groups), wraps the model from outside
(sharding or replication, activation checkpointing, compile) together with its optimizer, and owns
the update: backward with gradient accumulation, clipping, the optimizer step, and checkpoint state.
The trainer calls only these methods, so engines are swappable by `parallel.engine`:

    model, opt = engine.prepare(model, make_optimizer, grad_clip, blocks)
    for each micro-batch: engine.backward(model, loss, sync=<last micro-batch>)
    grad_norm = engine.step(model, opt)

`blocks` are the model's repeated blocks by group, from its model spec (models/spec.py): engines shard,
checkpoint and compile those one block at a time and never name a model's layers. `opt` is always the
plain torch optimizer the engine steps (its param_groups carry the learning rate the schedule sets),
whatever wrapper the engine puts around it. What each engine can do is written once, in registry.py.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path

import torch
import torch.distributed as dist

# torch.distributed.nn.functional's collectives default to `group=group.WORLD`, evaluated on import: imported
# after init_process_group (DDP and FSDP2 import it on first use), they hold the default group for the life of
# the process, past destroy_process_group. Imported here, before any group exists, the default is None.
import torch.distributed.nn  # noqa: F401
from torch import nn

from opensora_lite.checkpoint import dcp as dcp_files
from opensora_lite.checkpoint.files import clean_key, write_safetensors
from opensora_lite.config.schema import ParallelConfig
from opensora_lite.errors import ConfigError
from opensora_lite.layout import MODEL_FILE
from opensora_lite.models.attention import choose_kernels
from opensora_lite.parallel.checkpointing import apply_activation_checkpointing, compile_blocks
from opensora_lite.registry import ENGINES

MakeOptimizer = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
Blocks = dict[str, nn.ModuleList]  # a model's repeated blocks by group (ModelSpec.blocks)


def launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun, or from srun when torchrun is not used."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1:
        return int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rendezvous(world_size: int) -> dict[str, str]:
    """Default MASTER_ADDR/PORT (torchrun sets both): under srun (slurm/multinode.sbatch, a submitit sweep
    job) the job's first node and a port from the job id (jobs sharing a node differ); else this machine."""
    job, nodes = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_NODELIST")
    if world_size > 1 and job and nodes:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():
            return {"MASTER_ADDR": out.stdout.split()[0], "MASTER_PORT": str(20000 + int(job) % 20000)}
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500" if world_size > 1 else str(_free_port())}


def pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class Engine(ABC):
    """Distributed context + model wrapping + the update. Subclasses: LocalEngine (single, ddp),
    FSDP2Engine, DeepSpeedEngine, ColossalAIEngine."""

    # True where the module's parameters are not complete on every rank (sampling then uses a gathered copy)
    shards_parameters = False
    # True where the backend needs a process group even for one process (DeepSpeed, ColossalAI)
    needs_process_group = False
    # True where the trainer builds the model inside model_context() (on the meta device, or partitioned as
    # it is built) and calls materialize() after prepare() instead of loading weights into it
    builds_on_meta = False
    recomputed = 0  # blocks wrapped for activation checkpointing by wrap()
    sharded_blocks = 0  # blocks sharded one by one by wrap() (fsdp2 on several ranks)

    def __init__(self, cfg: ParallelConfig, device_preference: str):
        self.cfg = cfg
        self.info = ENGINES[cfg.engine]
        self.rank, self.world_size, self.local_rank = launch_env()
        self.device = pick_device(device_preference, self.local_rank)
        if (self.world_size > 1 or self.needs_process_group) and not dist.is_initialized():
            backend = cfg.backend if cfg.backend != "auto" else ("nccl" if self.device.type == "cuda" else "gloo")
            added = {k: v for k, v in _rendezvous(self.world_size).items() if k not in os.environ}
            os.environ.update(added)  # what the launcher set wins
            dist.init_process_group(
                backend,
                rank=self.rank,
                world_size=self.world_size,
                timeout=datetime.timedelta(seconds=cfg.timeout_s),
            )
            if self.world_size == 1:  # a one-process group's own port: not for the processes this one starts
                for key in added:  # (a Slurm job submitted from here would export it and share the port)
                    os.environ.pop(key, None)

        self.sp = self._sequence_parallel_groups()

    @property
    def writes_async(self) -> bool:
        """save_async() works: checkpoints are DCP folders (DeepSpeed's and ColossalAI's optimizer
        checkpoints are their backend's own, written synchronously)."""
        return self.info.writes_async

    def _sequence_parallel_groups(self):
        """Consecutive ranks form SP groups of parallel.sp_size; data parallelism runs across groups."""
        size = self.cfg.sp_size
        if size == 1:
            return None
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

    def compute_dtype(self) -> str:
        """parallel.param_dtype resolved: auto = bf16 on GPUs, fp32 on CPUs (bf16 is 20-35x slower there)."""
        name = self.cfg.param_dtype
        if name == "auto":
            return "bf16" if self.device.type == "cuda" else "fp32"
        return name

    def model_context(self):
        """The context the trainer builds the model in: the meta device where the engine builds on meta,
        deepspeed_zero3's partitioning construction, else none."""
        return torch.device("meta") if self.builds_on_meta else contextlib.nullcontext()

    def wrap(self, model: nn.Module, blocks: Blocks) -> nn.Module:
        """Prepare the model for training from outside: activation checkpointing (parallel.ac_blocks: how
        many blocks of each group), device, compile per block. Engines that replicate or shard do that on
        top. `blocks`: the model's repeated blocks (ModelSpec.blocks; empty for a model without them)."""
        self.recomputed = apply_activation_checkpointing(blocks, dict(self.cfg.ac_blocks))
        if not any(p.is_meta for p in model.parameters()):  # a model built on meta gets its device at materialize()
            model = model.to(self.device)
        choose_kernels(model, self.device)  # once, here: compiled blocks then find their attention kernel chosen
        if self.cfg.compile:
            compile_blocks(blocks)
        return model

    def shard_companion(self, module: nn.Module, blocks: Blocks) -> nn.Module:
        """A model a task runs beside the loop's (a distill stage's frozen teacher and its critic), on the
        engine's device: sharded as the loop's model is where the engine shards parameters (fsdp2: every
        block fully_shard-ed, its gradients reduce-scattered in backward), else replicated whole on every
        rank. No activation checkpointing, no compile."""
        return module.to(self.device)

    @abstractmethod
    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module inside whatever wrap() returned."""

    def prepare(
        self, model: nn.Module, make_optimizer: MakeOptimizer, grad_clip: float, blocks: Blocks | None = None
    ) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Wrap the model, build its optimizer over the wrapped parameters; returns (model, optimizer)."""
        model = self.wrap(model, blocks or {})
        self.grad_clip = grad_clip
        return model, make_optimizer([p for p in model.parameters() if p.requires_grad])

    def backward(self, model: nn.Module, loss: torch.Tensor, sync: bool = True) -> None:
        """Gradients of one micro-batch. sync=False on all but the last micro-batch of a step: engines
        that can defer the gradient reduction do (DDP, DeepSpeed); the result is the same."""
        loss.backward()

    def step(self, model: nn.Module, opt: torch.optim.Optimizer) -> float:
        """Clip (parallel-aware), update, zero the gradients; returns the gradient norm before clipping."""
        norm = self.clip_grad_norm(model, self.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        params = [p for p in model.parameters() if p.grad is not None]
        if max_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # sharded grads: a DTensor

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Complete fp32 weights on CPU with BFL names (meaningful on rank 0; every rank must call it)."""
        return self.gather_weights(model, lambda p: None)

    def full_param(self, p: nn.Parameter) -> torch.Tensor | None:
        """The full fp32 value of a parameter where the module does not hold it (a shard), else None."""
        return None

    def trainable_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Full fp32 values of the parameters that train (a LoRA stage: adapters), BFL names, on rank 0."""
        return self.gather_weights(model, self.full_param, trainable_only=True)

    def gather_weights(
        self,
        model: nn.Module,
        full_param: Callable[[nn.Parameter], torch.Tensor | None],
        trainable_only: bool = False,
    ):
        """The module's state dict with each parameter replaced by full_param(p) where that is not None
        (the engine's gathered fp32 master copy); called on every rank, kept on rank 0."""
        out = {}
        for name, value in self.unwrap(model).state_dict(keep_vars=True).items():
            if trainable_only and not (isinstance(value, nn.Parameter) and value.requires_grad):
                continue
            full = full_param(value) if isinstance(value, nn.Parameter) else None
            if self.is_main:
                out[clean_key(name)] = (value if full is None else full).detach().float().cpu().contiguous()
        return out

    # -- checkpoints: every rank calls these; `folder` exists on every rank's view of the filesystem --
    def save_model(self, folder: Path, model: nn.Module) -> None:
        """The weights of a mid-stage checkpoint: full safetensors from rank 0 (sharded engines: DCP)."""
        weights = self.full_state_dict(model)
        if self.is_main:
            write_safetensors(weights, folder / MODEL_FILE)

    def save_optimizer(self, folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Optimizer state as a DCP folder keyed by parameter names: loads on any engine and world size."""
        dcp_files.save_optimizer(folder, model, opt)

    def save_async(self, folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> list[Future]:
        """Model and optimizer as DCP folders written in the background (stage.async_checkpoint); see
        checkpoint/dcp.py. The host-memory stagers and gloo groups are made on first use and kept."""
        return dcp_files.save_async(
            folder, model, opt, [self._checkpoint_group(i) for i in (0, 1)], [self._stager(i) for i in (0, 1)]
        )

    def _stager(self, index: int):
        """The index-th host-memory stager, kept for the run: later checkpoints copy into the buffers the
        first one allocated (about 5x faster than fresh memory; the host then keeps one copy of this rank's
        model + optimizer state). Safe because a checkpoint starts only after the previous one is written."""
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        stagers = self.__dict__.setdefault("_stagers", [])
        while len(stagers) <= index:
            stagers.append(DefaultStager(StagingOptions(False, False, False, False)))
        return stagers[index]

    def _checkpoint_group(self, index: int):
        """The index-th gloo group of all ranks for background checkpoint writes (created on first use,
        by every rank at the same point); None without a process group."""
        if not dist.is_initialized():
            return None
        groups = self.__dict__.setdefault("_checkpoint_groups", [])
        while len(groups) <= index:
            groups.append(dist.new_group(backend="gloo"))
        return groups[index]

    def load_optimizer(self, folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
        dcp_files.load_optimizer(folder, model, opt, self.cfg.engine)

    def all_reduce_mean(self, value: float) -> float:
        return self.all_reduce_floats([value], "mean")[0]

    def all_reduce_floats(self, values: list[float], op: str) -> list[float]:
        """values reduced over all ranks in one collective; op: "mean" or "max"."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return [v / self.world_size if op == "mean" else v for v in t.tolist()]

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

    def release(self, model: nn.Module) -> None:
        """A finished stage's model is done with: free what the backend keeps of it (its memory, before
        the next stage builds its own). Every rank calls it; the model is not used afterwards. Nothing to
        do for engines whose model holds nothing beyond the caller's reference."""
        return None

    def shutdown(self, clean: bool = True) -> None:
        """Leave the process group. After a clean run all ranks first meet, so that no rank tears its
        connections down while a peer still uses them (gloo can abort the peer's process at exit);
        after a failure there may be no peer to meet.

        Then every group this engine and its backend made is destroyed and released here, on every rank:
        a group object that outlives destroy_process_group keeps its gloo threads and sockets (and on rank 0
        the store's server thread) until the interpreter exits, where each rank tears them down on its own
        (issue 27: a rank died at exit with "terminate called without an active exception", libstdc++'s
        message for a thread object destroyed unjoined). Sequence-parallel and
        checkpoint groups go first, then the backend's references and the default group with every
        other group (_destroy_groups); a garbage collection then frees what held a group in a reference
        cycle (a finished stage's model). The caller's own model and optimizer keep theirs until dropped."""
        for stager in self.__dict__.pop("_stagers", []):
            stager.close()
        if not dist.is_initialized():
            return
        if clean:
            dist.barrier()
        groups = self.__dict__.pop("_checkpoint_groups", [])
        if self.sp is not None and self.sp.group is not None:
            groups.append(self.sp.group)
            self.sp.group = None  # the model's SPContext too: it is the same object
        for group in groups:
            dist.destroy_process_group(group)
        self._destroy_groups()
        gc.collect()

    def _destroy_groups(self) -> None:
        """Destroy the default group and every group left. Engines with a backend first drop the
        references it keeps to its groups, and use its own teardown where it has one."""
        dist.destroy_process_group()
