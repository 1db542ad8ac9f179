"""The curation stages. Each is a small component: a name, its config (thresholds), `score(clip)` -> a dict
of figures, and `keep(scores)` -> None to keep or a reason to drop. Stages run in the configured order;
the first that drops a clip gives its reason. Dedup scores each clip (a perceptual hash) here and decides
in the merge, over every rank's clips in source order (`Deduper`).

The libraries do the work: PySceneDetect cuts scenes (clips.py), OpenCV measures optical flow (Farneback)
and sharpness (variance of the Laplacian), rapidocr finds text (its wheel ships the ONNX weights), FFmpeg's
vmafmotion and our luma difference come from ingest, and CLIP (transformers, local weights) + an MLP head
give the aesthetic score."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from opensora_lite.config.schema import (
    AestheticStageConfig,
    BlurStageConfig,
    BoundsStageConfig,
    CurateJobConfig,
    DedupStageConfig,
    MotionStageConfig,
    OcrStageConfig,
)
from opensora_lite.curate.clips import Clip
from opensora_lite.errors import ConfigError

MEASURES = ("flow", "motion_score", "vmaf_motion")
STAGE_NAMES = ("split", "bounds", "motion", "blur", "ocr", "aesthetic", "dedup")


def _bounds(value: float, lo: float | None, hi: float | None, name: str) -> str | None:
    if lo is not None and value < lo:
        return f"{name} {value:.4g} < {lo:g}"
    if hi is not None and value > hi:
        return f"{name} {value:.4g} > {hi:g}"
    return None


class Stage:
    """A curation stage: `score` a clip, `keep` or give the reason to drop; `limits`: {score: (lo, hi)}
    drawn on the report's histograms."""

    name = ""

    def score(self, clip: Clip) -> dict:
        raise NotImplementedError

    def keep(self, scores: dict) -> str | None:
        return None

    def limits(self) -> dict[str, tuple[float | None, float | None]]:
        return {}


class BoundsStage(Stage):
    name = "bounds"

    def __init__(self, cfg: BoundsStageConfig) -> None:
        self.cfg = cfg

    def score(self, clip: Clip) -> dict:
        return dict(
            duration=round(clip.duration, 4),
            fps=round(clip.fps, 4),
            width=clip.width,
            height=clip.height,
            aspect=round(clip.width / max(1, clip.height), 4),
        )

    def limits(self) -> dict:
        c = self.cfg
        return dict(
            duration=(c.min_duration, c.max_duration),
            fps=(c.min_fps, c.max_fps),
            width=(c.min_width, None),
            height=(c.min_height, None),
            aspect=(c.min_aspect, c.max_aspect),
        )

    def keep(self, scores: dict) -> str | None:
        for key, (lo, hi) in self.limits().items():
            why = _bounds(scores[key], lo, hi, key)
            if why:
                return why
        return None


def flow_motion(thumbs: np.ndarray, fps: float, gap_s: float, pairs: int) -> float:
    """Mean Farneback optical-flow magnitude between frames gap_s apart, in percent of the frame height per
    second (so thumbnails of any height agree), over up to `pairs` pairs spread over the clip."""
    import cv2

    gap = max(1, round(fps * gap_s))
    if len(thumbs) <= gap:
        return 0.0
    starts = np.linspace(0, len(thumbs) - 1 - gap, num=min(pairs, len(thumbs) - gap)).round().astype(int)
    mags = []
    for i in starts:
        flow = cv2.calcOpticalFlowFarneback(thumbs[i], thumbs[i + gap], None, 0.5, 3, 9, 3, 5, 1.1, 0)
        mags.append(float(np.linalg.norm(flow, axis=2).mean()))
    return float(np.mean(mags)) * 100.0 / thumbs.shape[1] / (gap / fps)


class MotionStage(Stage):
    """`flow` (ours, OpenCV) beside ingest's `motion_score` and `vmaf_motion` (the caption fields)."""

    name = "motion"

    def __init__(self, cfg: MotionStageConfig) -> None:
        if cfg.measure not in MEASURES:
            raise ConfigError("motion.measure", f"{cfg.measure!r}: flow | motion_score | vmaf_motion")
        self.cfg = cfg

    def score(self, clip: Clip) -> dict:
        meta = clip_meta(clip)
        flow = flow_motion(clip.thumbs, clip.fps, self.cfg.gap_s, self.cfg.pairs)
        return dict(flow=round(flow, 4), motion_score=meta["motion_score"], vmaf_motion=meta["vmaf_motion"])

    def limits(self) -> dict:
        return {m: (self.cfg.min, self.cfg.max) if m == self.cfg.measure else (None, None) for m in MEASURES}

    def keep(self, scores: dict) -> str | None:
        return _bounds(scores[self.cfg.measure], self.cfg.min, self.cfg.max, self.cfg.measure)


def clip_meta(clip: Clip) -> dict:
    """The shard json of the clip (ingest's: probe + motion_score + vmaf_motion), computed once."""
    from opensora_lite.data.ingest import video_meta

    if getattr(clip, "_meta", None) is None:
        clip._meta = video_meta(clip.data) or {}
    return clip._meta


def _grey(rgb: np.ndarray, height: int) -> np.ndarray:
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if grey.shape[0] > height:
        grey = cv2.resize(grey, (max(2, round(grey.shape[1] * height / grey.shape[0])), height), cv2.INTER_AREA)
    return grey


class BlurStage(Stage):
    name = "blur"

    def __init__(self, cfg: BlurStageConfig) -> None:
        self.cfg = cfg

    def score(self, clip: Clip) -> dict:
        import cv2

        values = [cv2.Laplacian(_grey(f, self.cfg.height), cv2.CV_64F).var() for f in clip.samples]
        return dict(sharpness=round(float(np.median(values)), 3) if values else 0.0)

    def limits(self) -> dict:
        return dict(sharpness=(self.cfg.min, None))

    def keep(self, scores: dict) -> str | None:
        return _bounds(scores["sharpness"], self.cfg.min, None, "sharpness")


class OcrStage(Stage):
    """Text boxes from rapidocr (detection + recognition, no angle classifier): a box counts when its text
    was read with confidence >= min_score and holds a letter or digit, so shapes the detector mistakes for
    text (it does on busy frames) are not counted. Frames are never enlarged for detection."""

    name = "ocr"

    def __init__(self, cfg: OcrStageConfig) -> None:
        self.cfg = cfg
        self._engine = None

    def _reader(self):
        if self._engine is None:
            from rapidocr import RapidOCR

            threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
            params = {
                "Global.log_level": "error",  # else a warning per frame without text
                "Global.text_score": self.cfg.min_score,
                "Det.limit_side_len": self.cfg.height,
                # the default enlarges small frames to 736 px: slow, and it then sees text in shapes
                "Det.limit_type": "max",
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
            self._engine = RapidOCR(params=params)
        return self._engine

    def text_area(self, rgb: np.ndarray) -> float:
        import cv2

        h = min(self.cfg.height, rgb.shape[0])
        if h < rgb.shape[0]:
            rgb = cv2.resize(rgb, (max(2, round(rgb.shape[1] * h / rgb.shape[0])), h), cv2.INTER_AREA)
        found = self._reader()(np.ascontiguousarray(rgb[..., ::-1]), use_cls=False)
        boxes, texts = getattr(found, "boxes", None), getattr(found, "txts", None)
        if boxes is None or texts is None:
            return 0.0
        mask = np.zeros(rgb.shape[:2], np.uint8)  # the union: overlapping boxes count once
        for box, text in zip(boxes, texts):
            if any(ch.isalnum() for ch in text):
                cv2.fillPoly(mask, [np.asarray(box, np.float32).round().astype(np.int32)], 1)
        return float(mask.mean())

    def score(self, clip: Clip) -> dict:
        return dict(text_area=round(max((self.text_area(f) for f in clip.samples), default=0.0), 5))

    def limits(self) -> dict:
        return dict(text_area=(None, self.cfg.max_area))

    def keep(self, scores: dict) -> str | None:
        return _bounds(scores["text_area"], None, self.cfg.max_area, "text_area")


class AestheticStage(Stage):
    """CLIP image embeddings (L2-normalised) through a stack of Linear layers, as LAION's improved aesthetic
    predictor (its state dict, saved as safetensors, loads as the head: layers.0, layers.2, ... in order)."""

    name = "aesthetic"

    def __init__(self, cfg: AestheticStageConfig) -> None:
        for key in ("clip", "head"):
            path = getattr(cfg, key)
            if not path:
                raise ConfigError(
                    f"aesthetic.{key}",
                    "the aesthetic stage needs local weights (aesthetic.clip: a CLIP folder, aesthetic.head: "
                    "the MLP's safetensors); give them or remove aesthetic from stages",
                )
            if not Path(path).exists():
                raise ConfigError(f"aesthetic.{key}", f"{path} does not exist")
        self.cfg = cfg
        self._model = None

    def _load(self):
        if self._model is None:
            import torch
            from safetensors.torch import load_file
            from transformers import CLIPVisionModelWithProjection

            model = CLIPVisionModelWithProjection.from_pretrained(self.cfg.clip).eval()
            state = load_file(self.cfg.head)
            ids = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.") and k.endswith(".weight")})
            layers = [(state[f"layers.{i}.weight"], state[f"layers.{i}.bias"]) for i in ids]
            cfg = model.config
            mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
            std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
            self._model = (model, layers, cfg.image_size, mean, std)
        return self._model

    def score(self, clip: Clip) -> dict:
        import cv2
        import torch

        model, layers, size, mean, std = self._load()
        crops = []
        for f in clip.samples:  # CLIP's preprocessing: short side to size, centre crop, normalise
            h, w = f.shape[:2]
            s = size / min(h, w)
            r = cv2.resize(f, (max(size, round(w * s)), max(size, round(h * s))), interpolation=cv2.INTER_CUBIC)
            top, left = (r.shape[0] - size) // 2, (r.shape[1] - size) // 2
            crops.append(r[top : top + size, left : left + size])
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            emb = model(pixel_values=(x - mean) / std).image_embeds
            y = torch.nn.functional.normalize(emb, dim=-1)
            for weight, bias in layers:
                y = y @ weight.T + bias
        return dict(aesthetic=round(float(y.mean()), 4))

    def limits(self) -> dict:
        return dict(aesthetic=(self.cfg.min, None))

    def keep(self, scores: dict) -> str | None:
        return _bounds(scores["aesthetic"], self.cfg.min, None, "aesthetic")


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash: the 8x8 lowest frequencies of a 32x32 grey image against their median."""
    import cv2

    grey = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(grey.astype(np.float32))[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


class DedupStage(Stage):
    """Scores the hashes; the decision is the merge's (`Deduper`), over all ranks in source order."""

    name = "dedup"

    def __init__(self, cfg: DedupStageConfig) -> None:
        self.cfg = cfg

    def score(self, clip: Clip) -> dict:
        return dict(phash=[f"{phash(f):016x}" for f in clip.samples])

    def limits(self) -> dict:
        return dict(dup_distance=(self.cfg.max_distance + 0.5, None))


class Deduper:
    """Near-duplicate search: clip B duplicates an earlier kept A when every sampled frame's hash is within
    max_distance bits of A's. Candidates come from bands of the first frame's hash: with max_distance + 1
    bands, two hashes that close share at least one band exactly (pigeonhole), so none is missed."""

    def __init__(self, max_distance: int) -> None:
        self.d = max_distance
        self.bands = max_distance + 1
        self.table: dict[tuple[int, int], list[int]] = {}
        self.kept: list[tuple[str, list[int]]] = []

    def _band_keys(self, h: int) -> list[tuple[int, int]]:
        edges = [64 * i // self.bands for i in range(self.bands + 1)]
        return [(i, (h >> a) & ((1 << (b - a)) - 1)) for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]

    def check(self, key: str, hashes: list[str]) -> tuple[str | None, int]:
        """(the key of the kept clip this one duplicates, or None; the smallest distance seen, 64 if none);
        a clip that is no duplicate is added."""
        hs = [int(h, 16) for h in hashes]
        best, best_key = 64, None
        seen: set[int] = set()
        for band in self._band_keys(hs[0]):
            for j in self.table.get(band, ()):
                if j in seen:
                    continue
                seen.add(j)
                other = self.kept[j][1]
                dist = max(bin(a ^ b).count("1") for a, b in zip(hs, other)) if len(other) == len(hs) else 64
                if dist < best:
                    best, best_key = dist, self.kept[j][0]
        if best_key is not None and best <= self.d:
            return best_key, best
        for band in self._band_keys(hs[0]):
            self.table.setdefault(band, []).append(len(self.kept))
        self.kept.append((key, hs))
        return None, best


# what each part imports (the curate extra; scenedetect is imported by the reading of every clip)
NEEDS = {"reading": ("cv2", "scenedetect"), "ocr": ("rapidocr", "onnxruntime"), "aesthetic": ("transformers",)}
BUILDERS = dict(
    bounds=lambda c: BoundsStage(c.bounds),
    motion=lambda c: MotionStage(c.motion),
    blur=lambda c: BlurStage(c.blur),
    ocr=lambda c: OcrStage(c.ocr),
    aesthetic=lambda c: AestheticStage(c.aesthetic),
    dedup=lambda c: DedupStage(c.dedup),
)


def build_stages(cfg: CurateJobConfig) -> list[Stage]:
    """The configured stages in order (split is done while reading clips); a stage that cannot run (its
    weights not given) is refused here, before any work, with one line naming the key."""
    unknown = [s for s in cfg.stages if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError("stages", f"unknown stage {unknown[0]!r} (choose from {', '.join(STAGE_NAMES)})")
    if len(set(cfg.stages)) != len(cfg.stages):
        raise ConfigError("stages", f"{list(cfg.stages)} names a stage twice")
    import importlib.util

    for name in ("reading", *cfg.stages):
        for module in NEEDS.get(name, ()):
            if importlib.util.find_spec(module) is None:
                raise ConfigError(
                    "stages", f"{name} needs the {module} package: install the curate extra (scripts/install.sh curate)"
                )
    return [BUILDERS[name](cfg) for name in cfg.stages if name != "split"]
