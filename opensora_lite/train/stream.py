"""A stage's batches: the bucketed video stream of its shards, or of its latent cache (data.kind=cached,
built once, by all ranks, before training reads it), dealt over data-parallel ranks and workers, resumed
from the loader state of its checkpoint."""

from __future__ import annotations

import logging

from opensora_lite.data.cache import CachedStream, bucket_table, build_cache, cached_shards, stage_seed
from opensora_lite.data.loader import BucketedVideoStream, LoaderState, batches, build_loader, expand_shards

log = logging.getLogger("opensora_lite")


def stage_batches(rt, name: str, index: int, image_condition: bool, resume: LoaderState):
    """An iterator of the stage's batches (`rt`: the stage's runtime view)."""
    cfg, engine = rt.cfg, rt.engine
    stage = cfg.curriculum.stages[name]
    stream_cls, shards = BucketedVideoStream, expand_shards(cfg.data.shards)
    if cfg.data.kind == "cached":  # build this stage's latent cache once (all ranks), then read it
        audio_ae = rt.audio_autoencoder() if cfg.data.audio.enabled else None  # audio latents beside the video's
        folder = build_cache(cfg, name, image_condition, rt.ae, rt.text, engine, watch=rt.preemption, audio_ae=audio_ae)
        stream_cls, shards = CachedStream, cached_shards(folder)
        log.info("[%s] training from the latent cache %s", name, folder)
    stream = stream_cls(
        shards,
        bucket_table(cfg, stage),
        cfg.data.target_fps,
        seed=stage_seed(cfg, index),
        rank=engine.dp_rank,  # ranks of one sequence-parallel group read the same batches
        world_size=engine.dp_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        decode_threads=cfg.data.decode_threads,
        caption_key=cfg.data.caption_key,
        caption_template=cfg.data.caption_template,
        image_caption_template=cfg.data.image_caption_template,
        resume=resume,
        open_retries=cfg.data.open_retries,
        audio=cfg.data.audio,  # the windows' sound in every batch (the cache holds its latents instead)
    )
    return batches(build_loader(stream, cfg.data.num_workers, cfg.data.prefetch_factor, engine.device.type == "cuda"))
