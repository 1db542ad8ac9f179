"""Parallel engines behind one interface (parallel/engine.py), chosen by `parallel.engine`; what each
can do is written in registry.py."""

from __future__ import annotations

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.errors import ConfigError
from opensora_lite.parallel.engine import Engine
from opensora_lite.registry import ENGINES


def require_package(engine: str) -> None:
    """One clear error when an engine's package is missing (before any process group is made)."""
    import importlib.util

    info = ENGINES[engine]
    if info.package is None:
        return
    try:
        found = importlib.util.find_spec(info.package) is not None
    except (ImportError, ValueError):  # present in sys.modules but unusable
        found = False
    if not found:
        raise ConfigError(
            "parallel.engine",
            f"{engine} needs the {info.package} package, which is not installed: add the {info.package} extra "
            f"(scripts/install.sh {info.package}; see {info.doc})",
        )


def build_engine(cfg: ParallelConfig, device: str) -> Engine:
    require_package(cfg.engine)
    if cfg.engine.startswith("deepspeed"):
        from opensora_lite.parallel.deepspeed_engine import DeepSpeedEngine

        return DeepSpeedEngine(cfg, device)
    if cfg.engine.startswith("colossalai"):
        from opensora_lite.parallel.colossalai_engine import ColossalAIEngine

        return ColossalAIEngine(cfg, device)
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
