"""`parallel=fsdp2`: every block sharded with torch's fully_shard (FSDP2), optionally HSDP.

Parameters, gradients and optimizer state are split over the shard group; each block's weights are
gathered just before it runs and freed after. With `parallel.hsdp_replicas` > 1 the ranks form a
(replicas x shards) mesh: shards within a group (a node), replicas across groups. Mixed precision keeps
fp32 master weights and reduces gradients in fp32; compute runs in bf16 on GPUs (`parallel.param_dtype`).
Mid-stage checkpoints are DCP folders written by every rank (`model_dcp/`, `optim_dcp/`), which load on
any world size and engine; the final weights are gathered into one safetensors file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from opensora_lite.checkpoint import dcp as dcp_files
from opensora_lite.checkpoint.files import clean_key
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import CheckpointError
from opensora_lite.models.loading import FIT_HINT, LoadReport
from opensora_lite.parallel.engine import Blocks, Engine


class FSDP2Engine(Engine):
    @property
    def shards_parameters(self) -> bool:
        """Several ranks, or one with parallel.shard_one_rank (a mesh of one: the sharded code paths, DTensor
        parameters and DCP checkpoints, on one GPU)."""
        return self.world_size > 1 or self.cfg.shard_one_rank

    @property
    def needs_process_group(self) -> bool:  # (the device mesh of a sharded single rank needs one)
        return self.cfg.shard_one_rank

    def _mesh(self):
        """The (replicas x) shards device mesh, made once: the loop's model and a task's companions share it."""
        from torch.distributed.device_mesh import init_device_mesh

        if self.__dict__.get("_meshes"):
            return self._meshes[0]

        replicas = self.cfg.hsdp_replicas
        if replicas > 1:
            mesh = init_device_mesh(
                self.device.type, (replicas, self.world_size // replicas), mesh_dim_names=("replicate", "shard")
            )
        else:
            mesh = init_device_mesh(self.device.type, (self.world_size,), mesh_dim_names=("shard",))
        self.__dict__.setdefault("_meshes", []).append(mesh)  # its groups are dropped in shutdown()
        return mesh

    def wrap(self, model: nn.Module, blocks: Blocks) -> nn.Module:
        model = super().wrap(model, blocks)  # AC, device, compile per block
        self.sharded_blocks = self._shard(model, blocks) if self.shards_parameters else 0
        return model  # (one rank: nothing to shard, plain training, same code paths)

    def shard_companion(self, module: nn.Module, blocks: Blocks) -> nn.Module:
        module = module.to(self.device)
        if self.shards_parameters:
            self._shard(module, blocks)
        return module

    def _shard(self, model: nn.Module, blocks: Blocks) -> int:
        """fully_shard the model's blocks one by one (its spec's), then the root with what is outside them
        (all of a model without blocks: an autoencoder); returns how many blocks."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = self._mesh()
        policy = MixedPrecisionPolicy(param_dtype=DTYPES[self.compute_dtype()], reduce_dtype=torch.float32)
        count = 0
        for chain in blocks.values():
            for block in chain:
                fully_shard(block, mesh=mesh, mp_policy=policy)
                count += 1
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return count

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def _destroy_groups(self) -> None:
        """The device mesh keeps its process groups in a dict (`_pg_registry`, torch 2.13: read only while
        torch.compile traces), and DTensor's module-level caches (redistribution plans, sharding
        propagation) keep meshes for the life of the process: emptied here, the mesh no longer holds the
        groups. No public API does it; other versions may lack the dict."""
        for mesh in self.__dict__.pop("_meshes", []):
            registry = getattr(mesh, "_pg_registry", None)
            if isinstance(registry, dict):
                registry.clear()
        super()._destroy_groups()

    @property
    def builds_on_meta(self) -> bool:
        """parallel.meta_init with several ranks: the trainer builds the model on the meta device and
        calls materialize() after prepare(), instead of building it whole on every rank."""
        return self.cfg.meta_init and self.shards_parameters

    def materialize(self, model: nn.Module, spec, weights: Path | None, seed: int) -> LoadReport:
        """Give a model built on meta and sharded by prepare() its values, each rank only its shards:
        from `weights` (read by the model spec's lazy reader in memory-mapped row slices, or a DCP folder
        of which each rank reads its part), else, and for keys the weights may lack (spec.optional_keys:
        inputs added on purpose), the from-scratch init replayed from `seed` by spec.initial_tensors,
        bitwise what building the model on the CPU gives."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        from opensora_lite.checkpoint.files import is_dcp_folder

        model.to_empty(device=self.device)
        params = {clean_key(n): p for n, p in model.named_parameters()}
        report = LoadReport(str(weights) if weights else "initialised from scratch")

        def rows(p) -> slice:
            _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
            return slice(offset[0], offset[0] + p.to_local().shape[0])

        found: set[str] = set()
        with torch.no_grad():
            if weights is not None and is_dcp_folder(weights):
                stored = {
                    clean_key(k): k for k in dcp.FileSystemReader(str(weights)).read_metadata().state_dict_metadata
                }
                found = stored.keys() & params.keys()
                dcp.load({stored[k]: params[k] for k in found}, checkpoint_id=str(weights))
                report.unexpected = sorted(stored.keys() - params.keys())
            elif weights is not None:
                source = spec.lazy_weights(weights)
                report.source = f"{weights} ({source.format}, rank-local slices)"
                for key in source.keys():
                    if key not in params:
                        report.unexpected.append(key)
                        continue
                    if source.shape(key) != tuple(params[key].shape):
                        own = tuple(params[key].shape)
                        raise CheckpointError(f"{weights}: {key} is {source.shape(key)}, the model's {own} {FIT_HINT}")
                    params[key].to_local().copy_(source.read(key, rows(params[key])))
                    found.add(key)
            report.missing = sorted(params.keys() - found) if weights is not None else []
            fatal = [k for k in report.missing if not k.startswith(spec.optional_keys())]
            if fatal:
                raise CheckpointError(f"{weights}: {len(fatal)} model tensors are missing, e.g. {fatal[:3]}")
            todo = set(report.missing) if weights is not None else set(params)
            if todo:
                torch.manual_seed(seed)  # the draws of the CPU build, replayed one tensor at a time
                for key, value in spec.initial_tensors(model, todo):
                    params[key].to_local().copy_(value[rows(params[key])])
        report.loaded = len(found)
        return report

    def full_param(self, p: nn.Parameter) -> torch.Tensor | None:
        return p.full_tensor() if hasattr(p, "full_tensor") else None  # a collective: every rank, one order

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if not self.shards_parameters:
            return super().full_state_dict(model)
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {clean_key(k): v.detach().float().contiguous() for k, v in sd.items()}

    def save_model(self, folder: Path, model: nn.Module) -> None:
        if not self.shards_parameters:
            return super().save_model(folder, model)
        dcp_files.save_model(folder, model)
