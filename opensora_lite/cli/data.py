"""`osl-data`: build a dataset as WebDataset shards.

osl-data                                  # the Shapes set into data/shapes (the tiny default)
osl-data out=/tmp/shapes shapes.num_clips=200
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from opensora_lite.cli.common import hydra_entry
from opensora_lite.config import ConfigError
from opensora_lite.config.schema import BuildDataConfig
from opensora_lite.data.synthetic import write_shapes_shards


@hydra_entry("build_data")
def main(cfg: DictConfig) -> None:
    job: BuildDataConfig = OmegaConf.to_object(cfg)
    if job.kind != "shapes":
        raise ConfigError("kind", f"unknown dataset kind {job.kind!r} (shapes)")
    out = Path(job.out)
    existing = sorted(out.glob("*.tar")) if out.is_dir() else []
    if existing and not job.overwrite:
        logging.getLogger("opensora_lite").warning(
            "%s already holds %d shards; keeping them (overwrite=true rebuilds)", out, len(existing)
        )
        print(f"{out}: {len(existing)} shards already present")
        return
    for old in existing:
        old.unlink()
    paths = write_shapes_shards(out, job.shapes)
    print(f"wrote {job.shapes.num_clips} clips in {len(paths)} shards to {out}")


if __name__ == "__main__":
    main()
