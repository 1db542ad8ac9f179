"""`osl-data`: build a dataset as WebDataset shards.

osl-data                                  # the Shapes set into data/shapes (the tiny default)
osl-data out=/tmp/shapes shapes.num_clips=200
osl-data kind=videos videos.source=/data/clips out=/data/shards           # folder + caption sidecars
osl-data kind=videos videos.source=/data/index.csv out=/data/shards       # path,text index
osl-data kind=videos videos.source=/data/clips videos.audio.enabled=true out=/data/shards   # with their sound
osl-data shapes.sound=true shapes.bounce=0.5 out=data/shapes_av     # Shapes with sound (docs/audio-video.md)
osl-data shapes=motion out=data/shapes_motion_src   # six speeds, also as files in <out>/clips (shapes.files)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from opensora_lite.cli.common import hydra_entry
from opensora_lite.config.schema import BuildDataConfig
from opensora_lite.config.validate_audio import validate_audio, validate_shapes_sound
from opensora_lite.data.ingest import list_folder, read_index, write_shards
from opensora_lite.data.synthetic import ALL_COLOURS, write_shapes_shards
from opensora_lite.errors import ConfigError, DataError


@hydra_entry("build_data")
def main(cfg: DictConfig) -> None:
    job: BuildDataConfig = OmegaConf.to_object(cfg)
    if job.kind not in ("shapes", "videos"):
        raise ConfigError("kind", f"unknown dataset kind {job.kind!r} (shapes | videos)")
    known = list(ALL_COLOURS)
    unknown = [c for c in job.shapes.colours if c not in known]
    if job.kind == "shapes" and (unknown or not job.shapes.colours):
        raise ConfigError("shapes.colours", f"{list(job.shapes.colours)}: choose from {known}")
    if job.kind == "videos" and not job.videos.source:
        raise ConfigError("videos.source", "give a folder of videos or a .csv/.parquet index")
    if job.kind == "videos":
        validate_audio(job.videos.audio, "videos.audio")
    if job.kind == "shapes":
        validate_shapes_sound(job.shapes)
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
    if job.kind == "shapes":
        for old in sorted((out / "clips").glob("clip*")) if existing else []:  # a rebuild's files replace these
            old.unlink()
        paths = write_shapes_shards(out, job.shapes)
        print(f"wrote {job.shapes.num_clips} clips in {len(paths)} shards to {out}")
        return
    v = job.videos
    src = Path(v.source)
    if src.is_dir():
        items = list_folder(src)
    elif src.is_file():
        items = read_index(src, v.path_column, v.caption_column, v.root)
    else:
        raise DataError(f"videos.source {src} does not exist")
    report = write_shards(
        items, out, v.samples_per_shard, v.workers, v.prefix, progress=sys.stderr.isatty(), audio=v.audio
    )
    print(f"wrote {report.written} of {len(items)} inputs in {len(report.shards)} shards to {out}")
    if report.skipped:
        print(f"skipped {sum(report.skipped.values())}: {dict(report.skipped)} (listed in {out / 'skipped.tsv'})")


if __name__ == "__main__":
    main()
