"""Parallel engines behind one interface (parallel/engine.py), chosen by `parallel.engine`."""

from __future__ import annotations

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.parallel.engine import Engine

ENGINES = ("single", "ddp")


def build_engine(cfg: ParallelConfig, device: str) -> Engine:
    from opensora_lite.parallel.local import LocalEngine

    engine = LocalEngine(cfg, device)
    if cfg.engine == "single" and engine.world_size > 1:
        raise ValueError(f"parallel.engine=single but {engine.world_size} processes were launched; use parallel=ddp")
    return engine
