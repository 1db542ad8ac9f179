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

from opensora_lite.models.flux_weights import clean_key
from opensora_lite.parallel.engine import Engine
from opensora_lite.train.state import MODEL_DCP

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class FSDP2Engine(Engine):
    @property
    def shards_parameters(self) -> bool:
        return self.world_size > 1

    def _mesh(self):
        from torch.distributed.device_mesh import init_device_mesh

        replicas = self.cfg.hsdp_replicas
        if replicas > 1:
            return init_device_mesh(
                self.device.type, (replicas, self.world_size // replicas), mesh_dim_names=("replicate", "shard")
            )
        return init_device_mesh(self.device.type, (self.world_size,), mesh_dim_names=("shard",))

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model = super().wrap(model)  # AC, device, compile per block
        if self.world_size == 1:  # nothing to shard: plain training, same code paths
            return model
        mesh = self._mesh()
        policy = MixedPrecisionPolicy(param_dtype=DTYPES[self.compute_dtype()], reduce_dtype=torch.float32)
        for block in [*model.double_blocks, *model.single_blocks]:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.world_size == 1:
            return super().full_state_dict(model)
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {clean_key(k): v.detach().float().contiguous() for k, v in sd.items()}

    def save_model(self, folder: Path, model: nn.Module) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        if self.world_size == 1:
            return super().save_model(folder, model)
        dcp.save(get_model_state_dict(model), checkpoint_id=str(folder / MODEL_DCP))
