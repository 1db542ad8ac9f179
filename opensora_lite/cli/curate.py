"""`osl-curate`: curate raw videos into training shards (docs/curation.md).

osl-curate source=/data/raw out=/data/curated                      # a folder of videos (caption sidecars kept)
osl-curate source=/data/list.txt out=/data/curated                 # a file list; or a .csv/.parquet index
osl-curate source=/data/shards out=/data/curated                   # existing shards (osl-data's)
osl-curate source=... out=... stages=[split,bounds,motion,blur,ocr,aesthetic,dedup] \\
    aesthetic.clip=/weights/clip-vit-large-patch14 aesthetic.head=/weights/aesthetic_mlp.safetensors
osl-curate source=... out=... motion.measure=vmaf_motion motion.min=0.5 bounds.min_duration=4
sbatch --array=0-63 slurm/curate_array.sbatch source=... out=...   # 64 ranks; the last one merges

Each rank takes its work units (rank/world, or a Slurm array's task id and count, or torchrun's RANK and
WORLD_SIZE); a rerun skips finished units. The last rank to finish merges: <out>/shards, <out>/index.jsonl,
<out>/report (table, histograms.png, dropped_<reason>.png).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from opensora_lite.cli.common import hydra_entry
from opensora_lite.config.schema import CurateJobConfig


@hydra_entry("curate")
def main(cfg: DictConfig) -> None:
    from opensora_lite.curate.merge import run

    job: CurateJobConfig = OmegaConf.to_object(cfg)
    run(job)


if __name__ == "__main__":
    main()
