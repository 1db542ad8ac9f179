"""A rank's random streams in a stage, checkpointed per rank so that a resume continues them exactly.

`host` (a CPU generator) draws the small things: timesteps, CFG text dropout, the task mix, a VAE's
posterior. `device` draws the flow noise where the model trains, so the largest draw of a step is made on
the GPU instead of on the CPU and copied over. On a CPU `device` is `host` itself: CPU runs draw exactly
what they drew before there were two streams.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("opensora_lite")
DEVICE_SEED_OFFSET = 0x5EED  # the device stream differs from the host one even where both are CPU generators


class StageGenerators:
    def __init__(self, device: torch.device, seed: int, separate: bool | None = None):
        """`separate` (default: off the CPU): a generator of its own for the device draws."""
        separate = torch.device(device).type != "cpu" if separate is None else separate
        self.host = torch.Generator().manual_seed(seed)
        self.device = torch.Generator(device).manual_seed(seed + DEVICE_SEED_OFFSET) if separate else self.host

    @property
    def separate(self) -> bool:
        return self.device is not self.host

    def reseed(self, seed: int) -> None:
        self.host.manual_seed(seed)
        if self.separate:
            self.device.manual_seed(seed + DEVICE_SEED_OFFSET)

    def checkpoint_state(self, engine) -> dict:
        """Every rank's states, gathered (every rank calls it): "generators" holds the host streams as
        checkpoints always did; "device_generators" the device streams where they are separate."""
        out = {"generators": engine.all_gather_object(self.host.get_state())}
        if self.separate:
            out["device_generators"] = engine.all_gather_object(self.device.get_state())
        return out

    def restore(self, state: dict, engine, name: str, reseed: int) -> None:
        """This rank's streams from a checkpoint's trainer state; new ones from `reseed` where the world size
        changed (per-rank streams cannot continue then) or the checkpoint lacks the device streams."""
        host, device = state["generators"], state.get("device_generators")
        if len(host) != engine.world_size:
            self.reseed(reseed)
            log.warning("[%s] resumed on %d ranks from %d: new noise streams", name, engine.world_size, len(host))
            return
        self.host.set_state(host[engine.rank])
        if not self.separate:
            return
        if device is not None and len(device) == engine.world_size:
            self.device.set_state(device[engine.rank])
        else:  # written where the noise came from the host stream (a CPU run)
            self.device.manual_seed(reseed + DEVICE_SEED_OFFSET)
            log.warning("[%s] the checkpoint holds no device noise streams: new ones", name)
