"""Parallel engines behind one interface (parallel/engine.py), chosen by `parallel.engine`."""

from __future__ import annotations

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.parallel.engine import Engine

ENGINES = ("single", "ddp", "fsdp2")


def build_engine(cfg: ParallelConfig, device: str) -> Engine:
    from opensora_lite.config.validate import ConfigError

    if cfg.engine == "fsdp2":
        from opensora_lite.parallel.fsdp2 import FSDP2Engine

        engine: Engine = FSDP2Engine(cfg, device)
        if engine.world_size % cfg.hsdp_replicas:
            raise ConfigError(
                "parallel.hsdp_replicas", f"{cfg.hsdp_replicas} does not divide the {engine.world_size} processes"
            )
        return engine
    from opensora_lite.parallel.local import LocalEngine

    engine = LocalEngine(cfg, device)
    if cfg.engine == "single" and engine.world_size > 1:
        raise ConfigError(
            "parallel.engine", f"single but {engine.world_size} processes were launched; use parallel=ddp or fsdp2"
        )
    return engine
