"""Stream bucketed video batches from WebDataset tar shards.

    shards --(split over ranks x workers, shuffled per epoch)--> samples --(shuffle buffer)-->
    bucket choice from metadata --> windowed PyAV decode to the bucket shape --> per-bucket buffers
    --> full batches

Every random choice for a sample (bucket, temporal crop) comes from a generator seeded by
(seed, epoch, sample key), so results do not depend on the number of workers. Bad samples are
skipped and counted by reason; the counts travel with the batches to the trainer.

With `audio` enabled every item also gets the sound of its window (data/audio.py: same start, a sample
count fixed by the window's span): read from the sample's stored track (`<key>.wav`, written by
`osl-data`) or, without one, decoded from the container. A clip without sound is kept and marked
(`has_audio` false, silence); one whose sound cannot be decoded is skipped (`corrupt_audio`).

Exact resume without decoding the past: a `LoaderState` (batches consumed, and the samples whose
decode failed) goes into every checkpoint. On resume each worker replays its share of those batches
from metadata alone -- bucket and window choices need no pixels, and the recorded failures stand in
for decode errors -- so buffers and shuffles reach exactly the same point, and only the samples still
waiting in bucket buffers are decoded.
"""

from __future__ import annotations

import atexit
import functools
import glob
import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import re
import tarfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from opensora_lite.data.audio import LAYOUTS, AudioDecodeError, audio_window, collate_audio
from opensora_lite.data.buckets import Bucket, BucketTable
from opensora_lite.data.captions import format_caption
from opensora_lite.data.video import VideoDecodeError, decode_window, probe, temporal_stride
from opensora_lite.errors import DataError

log = logging.getLogger(__name__)
VIDEO_EXTS = ("mp4", "avi", "mov", "mkv", "webm")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


REMOTE = ("pipe:", "http://", "https://", "s3://", "gs://")  # shard URLs that are not local paths


def expand_shards(spec: str) -> list[str]:
    """Shard URLs from a folder, a glob, a brace pattern, or URLs / `pipe:` commands."""
    from braceexpand import braceexpand

    if spec.startswith(REMOTE):
        return list(braceexpand(spec))
    path = Path(spec)
    if path.is_dir():
        return sorted(str(p) for p in path.glob("*.tar"))
    if any(c in spec for c in "*?["):
        return sorted(glob.glob(spec))
    return [p for p in braceexpand(spec) if Path(p).is_file()]


class _CutShort(tarfile.TarInfo):
    """TarInfo that marks its archive when the header stream stops before tar's end-of-archive blocks.
    Python's tarfile reads an archive cut off at (or inside) a member header as one that simply ends;
    the loader would then take the partial last sample (its caption without its video: "no_media") and
    lose the rest of the shard without a word."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError) as exc:
            tar.cut_short = str(exc)
            raise


def tar_members(stream, url: str, seen: Counter):
    """(name, bytes) of the regular files of a tar stream in order, like webdataset's tar_file_iterator
    (seen["members"] counts them); raises tarfile.ReadError when the archive is cut off anywhere, in a
    member's data or in a header."""
    tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_CutShort)
    for info in tar:
        if info.isreg() and not re.match(r"__[^/]*__($|/)", info.name):  # webdataset's meta files
            data = tar.extractfile(info).read()
            seen["members"] += 1
            yield {"fname": info.name, "data": data, "__url__": url}
        tar.members = []  # a stream: keep no index
    if getattr(tar, "cut_short", None):
        raise tarfile.ReadError(f"the archive ends without its end-of-archive blocks ({tar.cut_short})")


def _rng_for(seed: int, epoch: int, key: str) -> random.Random:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


@dataclass
class Item:
    bucket: Bucket
    frames: Any  # uint8 [T, H, W, 3] (cached stream: a dict of tensors); None until a replayed item is decoded
    caption: str
    key: str
    pending: tuple | None = None  # (decode_window arguments, audio window arguments) of a replayed item
    shard: str = ""  # the shard it came from
    audio: Any = None  # int16 [channels, margin + samples + margin] of the window (silence if it has none);
    # None: audio not read
    has_audio: bool = False
    audio_margin: int = 0  # samples of context on each side of the window in `audio` (data.audio.context)


@dataclass
class LoaderState:
    """Where one rank's stream stands: batches it consumed, and the samples ("epoch/key") whose decode
    failed before that point (gathered over ranks: decoding fails the same way wherever it runs)."""

    batches: int = 0
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"batches": self.batches, "failed": sorted(set(self.failed))}

    @classmethod
    def from_dict(cls, d: dict) -> LoaderState:
        return cls(int(d.get("batches", 0)), list(d.get("failed", [])))

    def worker_share(self, worker: int, workers: int) -> int:
        """Batches worker produced among the first `batches` (DataLoader takes workers in turn)."""
        return max(0, (self.batches - worker + workers - 1) // workers)


class BucketedVideoStream(IterableDataset):
    """Infinite stream of batches {video [B,3,T,H,W] in [-1,1], captions, keys, bucket, skipped (counts by
    reason), skipped_rows ((key, shard, reason) of each skip since the previous batch), failed}."""

    def __init__(
        self,
        urls: list[str],
        table: BucketTable,
        target_fps: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 256,
        decode_threads: int = 1,
        caption_key: str = "txt",
        start_epoch: int = 0,
        caption_template: str = "{caption}",
        image_caption_template: str | None = None,  # None: caption_template
        resume: LoaderState | None = None,
        open_retries: int = 2,
        retry_delay_s: float = 1.0,
        audio=None,  # an AudioDataConfig: with `enabled`, batches carry the windows' audio
    ):
        super().__init__()
        self.urls, self.table, self.target_fps, self.seed = list(urls), table, target_fps, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.decode_threads, self.caption_key = shuffle_buffer, decode_threads, caption_key
        self.start_epoch = start_epoch
        self.caption_template = caption_template
        self.image_caption_template = caption_template if image_caption_template is None else image_caption_template
        self.resume = resume or LoaderState()
        self.open_retries, self.retry_delay_s = open_retries, retry_delay_s
        self.audio = (audio.sample_rate, audio.layout) if audio is not None and audio.enabled else None
        self.audio_margin = int(audio.context) if self.audio is not None else 0
        self._warned: dict[str, tuple[float, int]] = {}
        self._unreadable: set[str] = set()  # local shards given up on in this process, for the whole run
        self._skip_rows: list[tuple[str, str, str]] = []  # (key, shard, reason) since the last batch
        self.replayed_decodes = 0  # decodes done while replaying (0 unless an item waits in a buffer)

    # -- samples -------------------------------------------------------------------------------
    def shards_for(self, epoch: int, worker: int, workers: int) -> list[str]:
        """This rank's `worker`'s shards in `epoch`: a seeded shuffle, dealt over ranks x workers."""
        shards = list(self.urls)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(shards)
        return shards[self.rank * workers + worker :: self.world_size * workers]

    def _samples(self, shards: list[str], skipped: Counter):
        import webdataset as wds
        from webdataset.tariterators import group_by_keys

        for url in shards:
            local = not url.startswith(REMOTE)
            if url in self._unreadable:  # a local shard this worker could not read earlier in the run
                self._skip(skipped, "unreadable_shard", "", url, warn=False)
                continue
            for attempt in range(self.open_retries + 1):
                read, seen = 0, Counter()
                try:
                    stream = wds.gopen(url, "rb")
                    try:
                        for sample in group_by_keys(tar_members(stream, url, seen)):
                            read += 1
                            yield sample
                    finally:
                        stream.close()
                    break
                except Exception as exc:  # cannot open / read (network, missing file), or a damaged tar
                    # samples already went out (a retry would repeat them; keep what was read), or a local
                    # tar that breaks after some files (reading it again breaks at the same place)
                    if read or (local and seen["members"]) or (attempt == self.open_retries and seen["members"]):
                        self._skip(skipped, "truncated_shard", "", url, warn=False)
                        self._warn("truncated_shard", "shard %s is damaged after %d samples: %s", url, read, exc)
                        break
                    if attempt == self.open_retries:
                        self._skip(skipped, "unreadable_shard", "", url, warn=False)
                        self._warn("unreadable_shard", "skipping shard %s after %d tries: %s", url, attempt + 1, exc)
                        if local:  # not tried again on the next passes (a URL's failure may be the network's)
                            self._unreadable.add(url)
                        break
                    time.sleep(self.retry_delay_s * 2**attempt)

    def _skip(self, skipped: Counter, reason: str, key: str, shard: str, warn: bool = True) -> None:
        """Count a skip and list it (key, shard, reason: the batch's `skipped_rows`; a whole shard's skip
        has no key)."""
        skipped[reason] += 1
        self._skip_rows.append((key, shard, reason))
        if warn:
            self._warn(reason, "skipped sample %s: %s", key, reason)

    def _warn(self, reason: str, msg: str, *args) -> None:
        """A warning per reason at most every 60 s; the ones held back are counted in the next."""
        now = time.monotonic()
        last, held = self._warned.get(reason, (-1e9, 0))
        if now - last < 60:
            self._warned[reason] = (last, held + 1)
            return
        suffix = f" (+{held} more like it since the last report)" if held else ""
        log.warning(msg + suffix, *args)
        self._warned[reason] = (now, 0)

    def _shuffled(self, samples, rng: random.Random):
        buf = []
        for s in samples:
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(rng.randrange(len(buf)))
        rng.shuffle(buf)
        yield from buf

    # -- one sample -> one bucketed item -----------------------------------------------------------
    def _prepare(self, sample: dict, epoch: int, skipped: Counter, replay: bool = False) -> Item | None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "")
        meta = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
            except ValueError:
                self._skip(skipped, "bad_metadata", key, url)
                return None
        caption = sample.get(self.caption_key)
        caption = caption.decode("utf-8", "replace").strip() if caption else str(meta.get("caption", "")).strip()
        if not caption:
            self._skip(skipped, "missing_caption", key, url)
            return None
        video_ext = next((e for e in VIDEO_EXTS if e in sample), None)
        template = self.caption_template if video_ext is not None else self.image_caption_template
        try:
            caption = format_caption(template, caption, meta, self.target_fps)
        except (KeyError, ValueError, IndexError):  # metadata lacks a field the template names
            self._skip(skipped, "caption_template_field", key, url)
            return None
        rng = _rng_for(self.seed, epoch, key)
        if video_ext is not None:
            media = (sample[video_ext], sample.get("wav"))
            return self._prepare_video(media, meta, caption, (key, url), rng, skipped, epoch, replay)
        image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if image_ext is not None:
            return self._prepare_image(sample[image_ext], caption, (key, url), rng, skipped)
        self._skip(skipped, "no_media", key, url)
        return None

    def _prepare_video(
        self, media: tuple, meta: dict, caption: str, where: tuple, rng, skipped: Counter, epoch: int, replay: bool
    ) -> Item | None:
        key, url = where
        data, wav = media
        try:
            if not all(k in meta for k in ("num_frames", "fps", "height", "width")):
                info = probe(data)
                meta = dict(meta, num_frames=info.num_frames, fps=info.fps, height=info.height, width=info.width)
            stride = temporal_stride(float(meta["fps"]), self.target_fps)
            usable = (int(meta["num_frames"]) - 1) // stride + 1
            bucket = self.table.assign(int(meta["height"]), int(meta["width"]), usable, rng)
            if bucket is None:
                self._skip(skipped, "no_bucket", key, url)
                return None
            span = (bucket.num_frames - 1) * stride + 1
            start = rng.randint(0, int(meta["num_frames"]) - span)
            window = (data, start, bucket.num_frames, stride, (bucket.height, bucket.width), self.decode_threads)
            sound = None
            if self.audio is not None:  # the stored track, if any; no track at all is known from the json
                silent = "audio" in meta and meta["audio"] is None
                sound = (None if silent else data, wav, *self.audio, start, bucket.num_frames, stride, meta["fps"])
                sound += (self.audio_margin,)
            item = Item(bucket, None, caption, key, pending=(window, sound), shard=url, audio_margin=self.audio_margin)
            if replay:
                if f"{epoch}/{key}" in self._failed:
                    raise VideoDecodeError("failed before the checkpoint")
                return item
            self._materialize(item)
        except VideoDecodeError as exc:
            self._skip(skipped, _decode_reason(exc), key, url)
            if not replay:
                self._new_failures.append(f"{epoch}/{key}")
            return None
        return item

    def _prepare_image(self, data: bytes, caption: str, where: tuple, rng, skipped: Counter) -> Item | None:
        key, url = where
        try:
            import av

            with av.open(io.BytesIO(data)) as container:
                frame = next(container.decode(video=0))
        except Exception:
            self._skip(skipped, "corrupt_image", key, url)
            return None
        from opensora_lite.data.video import frame_rotation, frame_to_rgb, resize_crop_size, upright_size

        rotation = frame_rotation(frame)
        height, width = upright_size(frame.height, frame.width, rotation)
        bucket = self.table.assign(height, width, 1, rng)
        if bucket is None:
            self._skip(skipped, "no_bucket", key, url)
            return None
        nh, nw, top, left = resize_crop_size(height, width, (bucket.height, bucket.width))
        rgb = frame_to_rgb(frame, (nh, nw), rotation)
        item = Item(bucket, rgb[None, top : top + bucket.height, left : left + bucket.width], caption, key, shard=url)
        if self.audio is not None:  # an image has no sound and no duration: no samples (its context: silence)
            item.audio = np.zeros((LAYOUTS[self.audio[1]], 2 * self.audio_margin), np.int16)
            item.audio_margin = self.audio_margin
        return item

    def items(self, shard: str, epoch: int, skipped: Counter):
        """Every usable item of one shard in shard order, decoded, bucketed and cropped exactly as the
        training stream does in `epoch` (what the latent cache precomputes)."""
        self._failed, self._new_failures, self._skip_rows = set(), [], []
        for sample in self._samples([shard], skipped):
            item = self._prepare(sample, epoch, skipped)
            if item is not None:
                yield item

    # -- batches -------------------------------------------------------------------------------
    @staticmethod
    def collate(items: list[Item], skipped: Counter, failed: list[str]) -> dict:
        """A batch: "video" [B, 3, T, H, W] uint8 (frames_on_device makes the model's input of it)."""
        video = torch.from_numpy(np.stack([it.frames for it in items])).permute(0, 4, 1, 2, 3)
        batch = {
            "video": video,
            "captions": [it.caption for it in items],
            "keys": [it.key for it in items],
            "bucket": items[0].bucket.key,
            "skipped": dict(skipped),
            "failed": failed,
        }
        if items[0].audio is not None:
            tracks, has_audio = [it.audio for it in items], [it.has_audio for it in items]
            batch.update(collate_audio(tracks, has_audio, items[0].audio_margin))
        return batch

    corrupt_reason = "corrupt_video"

    def _materialize(self, item: Item) -> None:
        """Decode an item's pending windows into its frames (and audio); raises VideoDecodeError (its
        AudioDecodeError for the sound)."""
        window, sound = item.pending
        item.frames = decode_window(*window)
        if sound is not None:
            item.audio, item.has_audio = audio_window(*sound)
        item.pending = None

    def _decode_pending(self, buf: list[Item], skipped: Counter) -> list[Item]:
        """Decode the replayed items of a buffer about to be emitted; drop any that fail."""
        ready = []
        for it in buf:
            if it.pending is not None:
                self.replayed_decodes += 1
                try:
                    self._materialize(it)
                except VideoDecodeError as exc:
                    self._skip(skipped, _decode_reason(exc, self.corrupt_reason), it.key, it.shard, warn=False)
                    continue
            ready.append(it)
        return ready

    def __iter__(self):
        info = get_worker_info()
        workers = info.num_workers if info else 1
        # The DataLoader asks workers in turn starting from worker 0; batch i of the stage came from
        # stream (i mod workers). A resumed loader's worker p therefore plays stream (p + batches) mod workers.
        worker = ((info.id if info else 0) + self.resume.batches) % workers
        to_replay = self.resume.worker_share(worker, workers)
        self._failed = set(self.resume.failed)
        self._new_failures: list[str] = []
        self._skip_rows = []
        epoch = self.start_epoch
        skipped: Counter = Counter()
        buffers: dict[str, list[Item]] = defaultdict(list)  # partial batches carry over epochs
        while True:
            shards = self.shards_for(epoch, worker, workers)
            if not shards:
                raise DataError(
                    f"{len(self.urls)} shards cannot feed {self.world_size} ranks x workers: "
                    "use fewer data.num_workers or more shards"
                )
            usable = 0
            order_rng = random.Random(self.seed * 7919 + epoch * 104729 + self.rank)
            for sample in self._shuffled(self._samples(shards, skipped), order_rng):
                item = self._prepare(sample, epoch, skipped, replay=to_replay > 0)
                if item is None:
                    continue
                usable += 1
                buf = buffers[item.bucket.key]
                buf.append(item)
                if len(buf) < item.bucket.batch_size:
                    continue
                if to_replay > 0:  # consumed before the checkpoint: drop it, undecoded
                    to_replay -= 1
                    buffers[item.bucket.key] = []
                    if to_replay == 0:
                        skipped.clear()  # counted and reported before the checkpoint
                        self._skip_rows = []
                    continue
                ready = self._decode_pending(buf, skipped)
                if len(ready) < len(buf):
                    buffers[item.bucket.key] = ready
                    continue
                batch = self.collate(buf, skipped, self._new_failures)
                yield {**batch, "skipped_rows": self._skip_rows}
                skipped.clear()  # in place: the shard reader holds this same counter
                self._new_failures, self._skip_rows = [], []
                buffers[item.bucket.key] = []
            if usable == 0:
                raise DataError(f"no usable sample in {len(shards)} shards (skipped: {dict(skipped)})")
            epoch += 1


def _decode_reason(exc: VideoDecodeError, video: str = "corrupt_video") -> str:
    return "corrupt_audio" if isinstance(exc, AudioDecodeError) else video


def _leave_signals_to_the_trainer(exiting, worker_id: int) -> None:
    """DataLoader worker start-up. Slurm and Kubernetes signal every process of a job step, loader workers
    included; left to torch's handler a worker dies on SIGTERM and takes the trainer down ("DataLoader
    worker is killed by signal") before it can checkpoint. So workers ignore INT, USR1 and USR2, and TERM
    until the trainer itself is exiting (`exiting` set): then TERM is how it ends them (multiprocessing
    terminates daemonic children at exit and waits for them)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)

    def on_term(signum, frame) -> None:
        if exiting.value:
            os._exit(0)

    signal.signal(signal.SIGTERM, on_term)


def frames_on_device(video: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A batch's uint8 frames [B, 3, T, H, W] as the models take them: float32 in [-1, 1] (x / 127.5 - 1,
    the same arithmetic on every device), made on `device` (docs/data.md: why frames travel as uint8)."""
    return video.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def build_loader(stream: BucketedVideoStream, num_workers: int, prefetch_factor: int, pin_memory: bool) -> DataLoader:
    kwargs = dict(num_workers=num_workers, batch_size=None, pin_memory=pin_memory)
    if num_workers > 0:
        exiting = multiprocessing.RawValue("b", 0)  # shared with the workers; read without a lock
        atexit.register(_mark_exiting, exiting)  # runs before multiprocessing's own exit handler
        kwargs.update(
            prefetch_factor=prefetch_factor,
            persistent_workers=True,
            worker_init_fn=functools.partial(_leave_signals_to_the_trainer, exiting),
        )
    return DataLoader(stream, **kwargs)


def _mark_exiting(exiting) -> None:
    exiting.value = 1


def batches(loader: DataLoader):
    """Iterate a loader; a DataError raised in a worker comes back as one plain DataError line."""
    it = iter(loader)
    while True:
        try:
            yield next(it)
        except DataError as exc:
            last = str(exc).strip().splitlines()[-1]
            raise DataError(last.split("DataError: ", 1)[-1]) from None
