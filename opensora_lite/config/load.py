"""Loading a composed config: the schemas registered with Hydra, then the typed, validated `Config`.

`register()` puts the dataclass schemas in Hydra's ConfigStore (config.yaml lists `osl_schema` first,
so every YAML in configs/ is merged onto typed nodes). `to_config()` turns a composed DictConfig into
the typed `Config`: the `model` node onto its family's config class (model.family, models/spec.py),
unknown keys refused with their full name, then the cross-field checks.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from opensora_lite.config.schema import (
    BuildDataConfig,
    Config,
    CurateJobConfig,
    ExportJobConfig,
    PlanJobConfig,
    SampleJobConfig,
)
from opensora_lite.config.validate import validate
from opensora_lite.errors import ConfigError
from opensora_lite.layout import config_dir  # noqa: F401 (callers find it here too)


def register() -> None:
    from hydra.core.config_store import ConfigStore

    from opensora_lite.models.spec import spec_for
    from opensora_lite.registry import MODEL_FAMILIES

    cs = ConfigStore.instance()
    cs.store(name="osl_schema", node=Config)
    for family in MODEL_FAMILIES:  # configs/model/*.yaml extend their family's typed schema
        cs.store(group="model", name=f"{family}_schema", node=spec_for(family).config_class)
    cs.store(name="osl_build_data_schema", node=BuildDataConfig)
    cs.store(name="osl_sample_schema", node=SampleJobConfig)
    cs.store(name="osl_export_schema", node=ExportJobConfig)
    cs.store(name="osl_plan_schema", node=PlanJobConfig)
    cs.store(name="osl_curate_schema", node=CurateJobConfig)


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


def typed_model(node, key: str = "model"):
    """A `model` node (a mapping, interpolations resolved against its root) as its family's config class."""
    from opensora_lite.models.spec import spec_for

    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
    spec = spec_for(plain.get("family", "flux"))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.config_class), plain)
        return OmegaConf.to_object(merged)
    except Exception as exc:  # a key the family's config lacks, a wrong type: OmegaConf names the field
        text = str(exc).strip().splitlines()[0]
        field = getattr(exc, "full_key", None) or getattr(exc, "key", None) or ""
        raise ConfigError(f"{key}.{field}" if field else key, f"{text} (model.family={spec.family})") from None


def to_config(cfg: DictConfig) -> Config:
    """Typed, validated config from a composed one (raises ConfigError naming the key)."""
    reject_unknown_keys(cfg)
    model = typed_model(cfg.model) if "model" in cfg else None
    obj = OmegaConf.to_object(cfg)
    if not isinstance(obj, Config):
        raise ConfigError(
            "<root>", "the composed config is not an opensora_lite Config (is osl_schema first in defaults?)"
        )
    if model is not None:
        obj.model = model
    return validate(obj)


def load_run_config(weights) -> Config:
    """The config a checkpoint was trained with: the run directory's config.yaml above it, loaded and
    checked as a training start loads its own (unknown keys, the model family, the cross-field checks)."""
    from pathlib import Path

    from opensora_lite.errors import CheckpointError
    from opensora_lite.layout import CONFIG_FILE

    for parent in Path(weights).parents:
        if (parent / CONFIG_FILE).is_file():
            saved = _renamed_keys(OmegaConf.to_container(OmegaConf.load(parent / CONFIG_FILE)))
            try:
                node = OmegaConf.merge(OmegaConf.structured(Config), saved)
            except (ConfigKeyError, ValidationError) as exc:
                raise ConfigError(exc.full_key, f"{exc.msg.splitlines()[0]} (in {parent / CONFIG_FILE})") from None
            try:
                return to_config(node)
            except ConfigError as exc:
                raise ConfigError(exc.key, f"{exc} (in {parent / CONFIG_FILE})") from None
    raise CheckpointError(f"no {CONFIG_FILE} of a run found above {weights}")


def _renamed_keys(saved: dict) -> dict:
    """A run's config.yaml as written before the model spec (2026-12-06): parallel.ac_double_blocks and
    parallel.ac_single_blocks read as parallel.ac_blocks.{double,single}_blocks, so the checkpoints of runs
    started before then still sample, export and resume."""
    par = saved.get("parallel") or {}
    old = {group: par.pop(f"ac_{group}") for group in ("double_blocks", "single_blocks") if f"ac_{group}" in par}
    if old:
        par["ac_blocks"] = {**old, **(par.get("ac_blocks") or {})}
    return saved
