"""Model and optimizer state as torch.distributed.checkpoint folders: what the single, ddp and fsdp2
engines write (synchronously, or in the background through host-memory stagers), keyed by parameter
names, so a checkpoint loads on any world size and any of those engines. Every rank calls these."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opensora_lite.checkpoint.files import is_dcp_folder, single_process_dcp
from opensora_lite.errors import CheckpointError
from opensora_lite.layout import MODEL_DCP, OPTIM_DCP
from opensora_lite.registry import ENGINES


def save_model(folder: Path, model: nn.Module) -> None:
    """The model's weights as `folder/model_dcp/` (each rank writes its shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    with single_process_dcp():
        dcp.save(get_model_state_dict(model), checkpoint_id=str(folder / MODEL_DCP), no_dist=not dist.is_initialized())


def save_optimizer(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> None:
    """The optimizer state as `folder/optim_dcp/`, keyed by parameter names."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = {"optim": get_optimizer_state_dict(model, opt)}
    with single_process_dcp():
        dcp.save(state, checkpoint_id=str(folder / OPTIM_DCP), no_dist=not dist.is_initialized())


def load_optimizer(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, engine: str) -> None:
    """The optimizer state of `folder/optim_dcp/` into `opt` (any world size that wrote it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    require_optimizer_state(folder, OPTIM_DCP, engine)
    state = {"optim": get_optimizer_state_dict(model, opt)}
    with single_process_dcp():
        dcp.load(state, checkpoint_id=str(folder / OPTIM_DCP), no_dist=not dist.is_initialized())
    set_optimizer_state_dict(model, opt, state["optim"])


def save_module(folder: Path, module: nn.Module, opt: torch.optim.Optimizer) -> None:
    """A module a task trains beside the loop's (train/tasks/companion.py): its weights and optimizer state
    as one DCP folder (each rank writes its shards; a replicated module's tensors are written once)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(module), "optim": get_optimizer_state_dict(module, opt)}
    with single_process_dcp():
        dcp.save(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())


def load_module(folder: Path, module: nn.Module, opt: torch.optim.Optimizer, what: str) -> None:
    """What save_module wrote into `module` and `opt` (any world size that wrote it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not is_dcp_folder(folder):
        raise CheckpointError(
            f"{folder.parent} has no {folder.name}/ ({what}'s weights and optimizer state): written by an older "
            "version or another stage kind; start a new stage from its weights (stage.init=<checkpoint>)"
        )
    state = {"model": get_model_state_dict(module), "optim": get_optimizer_state_dict(module, opt)}
    with single_process_dcp():
        dcp.load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_model_state_dict(module, state["model"])
    set_optimizer_state_dict(module, opt, state["optim"])


def save_async(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, groups, stagers) -> list[Future]:
    """Model and optimizer as DCP folders (`model_dcp/`, `optim_dcp/`) written in the background. Their
    state is copied to host memory (by `stagers`, one per part, kept for the run) before this returns,
    so training may go on updating it; each future completes when every rank's files and the metadata
    are on disk. Each part plans over its own gloo group (`groups`, None without a process group), so
    its collectives never interleave with training's."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    parts = {MODEL_DCP: get_model_state_dict(model), OPTIM_DCP: {"optim": get_optimizer_state_dict(model, opt)}}
    futures = []
    for (name, state), group, stager in zip(parts.items(), groups, stagers):
        with single_process_dcp():
            futures.append(
                dcp.async_save(
                    state,
                    checkpoint_id=str(folder / name),
                    process_group=group,
                    async_stager=stager,
                    no_dist=not dist.is_initialized(),
                )
            )
    return futures


def require_optimizer_state(folder: Path, name: str, engine: str) -> None:
    """One clear error when a checkpoint's optimizer state is not in the form this engine reads."""
    if (folder / name).is_dir():
        return
    owners: dict[str, list[str]] = {}
    for info in ENGINES.values():
        owners.setdefault(info.optimizer_folder, []).append(info.name)
    found = [f"{f} (parallel={'|'.join(names)})" for f, names in owners.items() if (folder / f).exists()]
    raise CheckpointError(
        f"{folder} has no {name}/ optimizer state for parallel={engine}"
        + (f"; it holds {', '.join(found)}" if found else "")
        + ". Resume with the engine that wrote it, or start a new stage from its weights (stage.init=<checkpoint>)"
    )
