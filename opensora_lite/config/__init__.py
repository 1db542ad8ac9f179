"""Config schema registration and loading.

`register()` puts the dataclass schemas in Hydra's ConfigStore (config.yaml lists `osl_schema` first,
so every YAML in configs/ is merged onto typed nodes). `to_config()` turns a composed DictConfig into
the typed `Config` and runs the cross-field checks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from opensora_lite.config.schema import BuildDataConfig, Config, ExportJobConfig, PlanJobConfig, SampleJobConfig
from opensora_lite.config.validate import ConfigError, validate

__all__ = ["Config", "ConfigError", "config_dir", "register", "to_config"]


def config_dir() -> Path:
    """The configs/ folder of this checkout (the package is installed editable from it)."""
    path = Path(__file__).resolve().parents[2] / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"configs/ not found next to the package ({path}); install with `pip install -e .`")
    return path


def register() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="osl_schema", node=Config)
    cs.store(name="osl_build_data_schema", node=BuildDataConfig)
    cs.store(name="osl_sample_schema", node=SampleJobConfig)
    cs.store(name="osl_export_schema", node=ExportJobConfig)
    cs.store(name="osl_plan_schema", node=PlanJobConfig)


def reject_unknown_keys(node: DictConfig, path: str = "") -> None:
    """`+key=value` adds past the schema and to_object() would drop it silently: refuse it instead."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        fields = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            if key not in fields and key != "hydra":
                raise ConfigError(f"{path}{key}", f"unknown key ({schema.__name__} has no such field)")
    for key in node.keys():
        child = node[key] if key != "hydra" else None
        if isinstance(child, DictConfig):
            reject_unknown_keys(child, f"{path}{key}.")


def to_config(cfg: DictConfig) -> Config:
    """Typed, validated config from a composed one (raises ConfigError naming the key)."""
    reject_unknown_keys(cfg)
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):
        raise ConfigError(
            "<root>", "the composed config is not an opensora_lite Config (is osl_schema first in defaults?)"
        )
    return validate(obj)
