"""The latent cache: raw video shards -> shards of precomputed model inputs for one stage.

Encoding video with a VAE and captions with T5-XXL costs GPU time on every epoch; the cache does it
once. For each sample the precompute takes exactly the crop the training stream would give in its
first epoch (same bucket choice, window and resize: `BucketedVideoStream.items`) and stores

    x0     the scaled latent of the crop            (autoencoder output dtype, float32)
    head   the first frame encoded on its own       (only for stages with image conditioning)
    tail   the last frame encoded on its own        (idem)
    t5     T5 token embeddings [max_length, dim]    (the encoder's own dtype: bf16 for T5-XXL)
    clip   CLIP pooled vector [dim]                 (idem)

and, with data.audio.enabled, the window's sound through the audio autoencoder (its front end included):

    audio_x0   the scaled audio latents [C, T', F'] (float32; none of an image's: T' = 0)
    has_audio  whether the clip has sound (bool; a clip without is encoded as the silence the loader gives)

in one safetensors blob per sample, with a json record of its bucket, caption and crop. Training with
`data.kind=cached` reads these shards with the same bucket semantics (batch size per bucket from the
stage) and the same exact-resume machinery as the video stream; a cached sample's inputs are bitwise
what encoding that crop on the fly gives (tests/test_cache.py).

Layout: `<data.cache_dir>/<stage>-<fingerprint>/` holding `NNNNN.tar` (one per source shard, written
aside then renamed, so a shard is complete or absent) and `manifest.json` (written last). The
fingerprint hashes everything the inputs depend on (source shards, buckets, fps, seed, caption
template, autoencoder and text-encoder settings, the contents of the autoencoder's weights), so a
changed setting builds a new cache and an unchanged one is reused across runs. The precompute runs
on every rank of a job (rank r encodes source shards r, r + world, ...), resumes by skipping finished
shards, and shows a progress bar.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from tqdm import tqdm

from opensora_lite.data.audio import front_end_input
from opensora_lite.data.buckets import Bucket, BucketTable
from opensora_lite.data.loader import BucketedVideoStream, Item, expand_shards, frames_on_device
from opensora_lite.data.video import VideoDecodeError
from opensora_lite.errors import DataError

log = logging.getLogger("opensora_lite")
VERSION = 1
MANIFEST = "manifest.json"


def stage_seed(cfg, index: int) -> int:
    """The data seed of the stage at position `index` (shared with the trainer's video stream)."""
    return cfg.run.seed * 100 + index


def bucket_table(cfg, stage) -> BucketTable:
    multiple = cfg.autoencoder.spatial_factor * cfg.model.patch_size[1]
    return BucketTable(stage.buckets, cfg.data.aspect_ratios, multiple)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """One file's content digest (size and mtime in the key: a process hashes an unchanged file once)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def weights_digest(path: str | None) -> str | None:
    """A digest of the contents of an autoencoder's weights (a file, or every file of a folder): weights
    replaced at the same path (a fine-tuned VAE saved over the old one) give another cache; each node's
    own copy at the same path gives the same one. None for random weights (no path)."""
    if not path or not Path(path).exists():
        return None
    root = Path(path)
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    total = hashlib.blake2b(digest_size=8)
    for f in files:
        st = f.stat()
        digest = _file_digest(str(f.resolve()), st.st_size, st.st_mtime_ns)
        total.update(f"{f.relative_to(root) if root.is_dir() else f.name}:{digest};".encode())
    return total.hexdigest()


def describe(cfg, name: str, image_condition: bool) -> dict:
    """Everything the cached inputs of stage `name` depend on (hashed into the folder name)."""
    stage = cfg.curriculum.stages[name]
    sources = []
    for url in expand_shards(cfg.data.shards):
        path = Path(url)
        sources.append([path.name, path.stat().st_size] if path.is_file() else [url, None])
    return (
        {
            "version": VERSION,
            "sources": sources,
            "buckets": {res: {str(n): list(e) for n, e in frames.items()} for res, frames in stage.buckets.items()},
            "aspect_ratios": list(cfg.data.aspect_ratios),
            "target_fps": cfg.data.target_fps,
            "seed": stage_seed(cfg, list(cfg.curriculum.stages).index(name)),
            "caption_key": cfg.data.caption_key,
            "caption_template": cfg.data.caption_template,
            "patch": list(cfg.model.patch_size),
            # settings that change no output (memory placement, memo size) stay out: toggling them reuses the cache
            # (the dc_ae architecture only when it is the autoencoder: other kinds keep their cache folders)
            "autoencoder": {
                k: v
                for k, v in asdict(cfg.autoencoder).items()
                if k != "offload_decoder" and (k != "dc_ae" or cfg.autoencoder.kind == "dc_ae")
            },
            "text_encoder": {k: v for k, v in asdict(cfg.text_encoder).items() if k != "cache_size"},
            "image_condition": image_condition,
        }
        | (_audio_spec(cfg) if cfg.data.audio.enabled else {})  # only with sound: other caches keep their folders
        | (  # only when set, so caches built before the key existed keep their folders
            {"image_caption_template": cfg.data.image_caption_template}
            if cfg.data.image_caption_template is not None
            else {}
        )
        | ({"autoencoder_weights": digest} if (digest := weights_digest(cfg.autoencoder.path)) else {})
    )


def _audio_spec(cfg) -> dict:
    """What audio latents depend on: the sound's rate and layout, the audio autoencoder (the vocoder
    changes no latent) and the contents of its weights."""
    ae = {k: v for k, v in asdict(cfg.audio_autoencoder).items() if k != "vocoder"}
    if cfg.audio_autoencoder.kind != "mel_ae":
        ae.pop("mel_ae")
    spec = {"audio": {"data": asdict(cfg.data.audio), "autoencoder": ae}}
    for name in ("path", "stats_path"):
        if digest := weights_digest(getattr(cfg.audio_autoencoder, name)):
            spec["audio"][f"autoencoder_{name}_digest"] = digest
    return spec


def cache_folder(cfg, name: str, image_condition: bool) -> tuple[Path, dict]:
    spec = describe(cfg, name, image_condition)
    digest = hashlib.blake2b(json.dumps(spec, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()
    return Path(cfg.data.cache_dir) / f"{name}-{digest}", spec


def is_complete(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def item_generator(seed: int, key: str) -> torch.Generator:
    """The noise of one sample's posterior draws: fixed by the stage seed and the sample key (the audio
    autoencoder's: key + "/audio")."""
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)


@torch.no_grad()
def encode_item(
    item: Item, ae, text, device, image_condition: bool, seed: int = 0, audio_ae=None
) -> dict[str, torch.Tensor]:
    """The model inputs of one cropped item, as the trainer computes them on the fly. A VAE's latents
    are one draw from its posterior (as in training), with noise fixed by (seed, key) so that a rebuilt
    or differently split cache is bitwise the same. With `audio_ae`, the window's sound (`item.audio`)
    is encoded too."""
    batch = BucketedVideoStream.collate([item], Counter(), [])
    video = frames_on_device(batch["video"], device)
    gen = item_generator(seed, item.key)
    out = {"x0": ae.encode(video, generator=gen)[0]}
    if image_condition:
        out["head"] = ae.encode(video[:, :, :1], generator=gen)[0]
        out["tail"] = ae.encode(video[:, :, -1:], generator=gen)[0]
    if audio_ae is not None:
        audio_gen = item_generator(seed, f"{item.key}/audio")
        sound, context = front_end_input(batch)  # the window with its context (data/audio.py)
        out["audio_x0"] = audio_ae.encode(sound.to(device), generator=audio_gen, context=context)[0]
        out["has_audio"] = batch["has_audio"][0]
    t5, clip = text.encode_native([item.caption])
    out["t5"], out["clip"] = t5[0], clip[0]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def build_cache(
    cfg, name: str, image_condition: bool, ae, text, engine, progress: bool = True, watch=None, audio_ae=None
) -> Path:
    """Precompute stage `name`'s cache (every rank its share; finished shards are kept). Returns its folder.
    With data.audio.enabled, `audio_ae` (the audio autoencoder) encodes each window's sound beside it.

    With a `PreemptionWatch`, a stop signal ends the work after the shard being written: the ranks meet,
    and all raise `Preempted`; a rerun builds only the shards still missing."""
    import webdataset as wds

    folder, spec = cache_folder(cfg, name, image_condition)
    if is_complete(folder):
        return folder
    stage = cfg.curriculum.stages[name]
    sources = expand_shards(cfg.data.shards)
    if engine.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    engine.barrier()
    stream = BucketedVideoStream(
        sources,
        bucket_table(cfg, stage),
        cfg.data.target_fps,
        seed=spec["seed"],
        decode_threads=cfg.data.decode_threads,
        caption_key=cfg.data.caption_key,
        caption_template=cfg.data.caption_template,
        image_caption_template=cfg.data.image_caption_template,
        open_retries=cfg.data.open_retries,
        audio=cfg.data.audio,
    )
    if cfg.data.audio.enabled and audio_ae is None:
        raise ValueError("build_cache: data.audio.enabled needs the audio autoencoder (audio_ae)")
    audio_ae = audio_ae if cfg.data.audio.enabled else None
    mine = list(enumerate(sources))[engine.rank :: engine.world_size]
    todo = [(i, url) for i, url in mine if not (folder / f"{i:05d}.tar").is_file()]
    show = progress and engine.is_main and sys.stderr.isatty()
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"cache {name}", unit="shard", disable=not show)
    for i, url in todo:
        partial = folder / f".{i:05d}.tar.partial-{engine.rank}"
        skipped: Counter = Counter()
        written = 0
        with wds.TarWriter(str(partial)) as sink:
            for item in stream.items(url, 0, skipped):
                tensors = encode_item(item, ae, text, engine.device, image_condition, spec["seed"], audio_ae)
                b = item.bucket
                meta = {"caption": item.caption, "resolution": b.resolution, "num_frames": b.num_frames}
                meta.update(height=b.height, width=b.width, source=Path(url).name)
                sink.write({"__key__": item.key, "inputs.safetensors": save_tensors(tensors), "json": json.dumps(meta)})
                written += 1
        (folder / f"{i:05d}.json").write_text(json.dumps({"source": url, "samples": written, "skipped": skipped}))
        os.replace(partial, folder / f"{i:05d}.tar")  # the tar last: a present tar has its record
        bar.update(1)
        if watch is not None and watch.received:
            break
    bar.close()
    engine.barrier()
    signame = watch.should_stop(engine.world_size, engine.device) if watch is not None else None
    if signame:
        from opensora_lite.errors import Preempted

        done = sum(1 for i in range(len(sources)) if (folder / f"{i:05d}.tar").is_file())
        kept = f"latent cache: {done} of {len(sources)} shards written and kept"
        raise Preempted(name, 0, signame, kept)
    error = None
    if engine.is_main:
        records = [json.loads((folder / f"{i:05d}.json").read_text()) for i in range(len(sources))]
        total, reasons = sum(r["samples"] for r in records), Counter()
        for r in records:
            reasons.update(r["skipped"])
        if total == 0:
            error = f"the latent cache of stage {name} is empty (skipped: {dict(reasons)})"
        else:
            manifest = dict(spec, stage=name, shards=len(sources), samples=total, skipped=dict(reasons))
            tmp = folder / (MANIFEST + ".partial")
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, folder / MANIFEST)
            log.info("[%s] latent cache %s: %d samples, skipped %s", name, folder, total, dict(reasons))
    error = engine.broadcast_object(error)  # every rank stops with the same message
    if error:
        raise DataError(error)
    return folder


class CachedStream(BucketedVideoStream):
    """The training stream over a latent cache: same shard dealing, shuffling, bucket batching and exact
    resume as the video stream; batches hold the precomputed inputs instead of pixels."""

    corrupt_reason = "corrupt_cache"

    def _prepare(self, sample: dict, epoch: int, skipped: Counter, replay: bool = False) -> Item | None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "")
        try:
            meta = json.loads(sample["json"])
            blob = sample["inputs.safetensors"]
        except (KeyError, ValueError):
            self._skip(skipped, "corrupt_cache", key, url)
            return None
        batch = self.table.batch_size(meta["resolution"], int(meta["num_frames"]))
        if batch is None:
            self._skip(skipped, "bucket_not_in_stage", key, url)
            return None
        bucket = Bucket(meta["resolution"], int(meta["num_frames"]), int(meta["height"]), int(meta["width"]), batch)
        item = Item(bucket, None, meta["caption"], key, pending=(blob,), shard=url)
        if replay:
            return item
        try:
            self._materialize(item)
            return item
        except VideoDecodeError:
            self._skip(skipped, "corrupt_cache", key, url)
            return None

    def _materialize(self, item: Item) -> None:
        try:
            item.frames = load_tensors(item.pending[0])
        except Exception as exc:  # a damaged blob
            raise VideoDecodeError(f"unreadable cached sample: {exc}") from None
        item.pending = None

    @staticmethod
    def collate(items: list[Item], skipped: Counter, failed: list[str]) -> dict:
        """Stacked inputs. Audio latents of one bucket differ in length only where clips of different frame
        rates share it (their windows' sound does, docs/audio-video.md): they are padded with zeros to
        the longest, and `audio_frames` [B] says how many latent frames each has."""
        audio = "audio_x0" in items[0].frames
        frames = [it.frames["audio_x0"].shape[1] for it in items] if audio else []
        if audio and len(set(frames)) > 1:
            for it in items:
                z = it.frames["audio_x0"]
                it.frames["audio_x0"] = torch.nn.functional.pad(z, (0, 0, 0, max(frames) - z.shape[1]))
        batch = {name: torch.stack([it.frames[name] for it in items]) for name in items[0].frames}
        if audio:
            batch["audio_frames"] = torch.tensor(frames, dtype=torch.long)
        batch.update(
            captions=[it.caption for it in items],
            keys=[it.key for it in items],
            bucket=items[0].bucket.key,
            skipped=dict(skipped),
            failed=failed,
        )
        return batch


def cached_shards(folder: Path) -> list[str]:
    shards = sorted(str(p) for p in folder.glob("[0-9]*.tar"))
    if not shards:
        raise DataError(f"latent cache {folder} has no shards")
    return shards
