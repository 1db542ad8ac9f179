"""Contact sheets: many short clips in one picture, one row per clip, one column per frame.

What a user looks at to see what a model learned (text-to-video samples, image-to-video samples,
autoencoder reconstructions) without opening mp4s one at a time. Each row starts with its label
(the prompt) written on a dark panel; frames are enlarged by an integer factor (nearest neighbour,
so every generated pixel stays a flat block) and separated by a thin gap.

Clips with sound get a spectrogram under their frames (their log-mel's first channel, low mels at the
bottom, brighter is louder), on the frames' time line: frame k's column starts where its sound starts
(k / fps), so a click heard with a frame sits under that frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKGROUND = (16, 16, 16)
TEXT = (235, 235, 235)


@dataclass(frozen=True)
class SheetLayout:
    """Where everything is on a sheet: cell (row, frame) covers [top:top+h, left:left+w]."""

    rows: int
    frames: int
    frame_h: int  # enlarged frame size
    frame_w: int
    scale: int
    label_w: int
    gap: int
    spec_h: int = 0  # the spectrogram strip under each row's frames (0: clips without sound)

    @property
    def row_h(self) -> int:
        return self.frame_h + (self.spec_h + self.gap if self.spec_h else 0)

    def cell(self, row: int, frame: int) -> tuple[int, int]:
        """(top, left) pixel of one enlarged frame."""
        return self.gap + row * (self.row_h + self.gap), self.label_w + self.gap + frame * (self.frame_w + self.gap)

    def spectrogram(self, row: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a row's spectrogram: under its frames, as wide as all of them
        (the clip's time runs from the first frame's left edge to where a next frame would start, less
        the gap)."""
        top, left = self.cell(row, 0)
        return top + self.frame_h + self.gap, left, self.spec_h, self.frames * (self.frame_w + self.gap) - self.gap

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole sheet."""
        return self.gap + self.rows * (self.row_h + self.gap), self.label_w + self.gap + self.frames * (
            self.frame_w + self.gap
        )


def layout_for(
    videos: list[np.ndarray], scale: int = 4, label_w: int = 240, gap: int = 2, sound: bool = False
) -> SheetLayout:
    t, h, w, _ = videos[0].shape
    return SheetLayout(
        len(videos), t, h * scale, w * scale, scale, label_w, gap, max(32, h * scale // 2) if sound else 0
    )


def contact_sheet(
    videos: list[np.ndarray] | np.ndarray,
    labels: list[str],
    scale: int = 4,
    label_w: int = 240,
    gap: int = 2,
    spectrograms: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, SheetLayout]:
    """uint8 sheet [H, W, 3] of clips (each uint8 [T, h, w, 3], all the same shape) with their labels;
    `spectrograms`: each clip's log-mel ([channels, frames, mels] or [frames, mels]), drawn under it."""
    from PIL import Image, ImageDraw, ImageFont

    videos = [np.asarray(v) for v in videos]
    if not videos:
        raise ValueError("a contact sheet needs at least one clip")
    if len(labels) != len(videos):
        raise ValueError(f"{len(videos)} clips but {len(labels)} labels")
    if any(v.shape != videos[0].shape or v.dtype != np.uint8 or v.ndim != 4 for v in videos):
        raise ValueError("every clip must be uint8 [T, h, w, 3] of one shape")
    if spectrograms is not None and len(spectrograms) != len(videos):
        raise ValueError(f"{len(videos)} clips but {len(spectrograms)} spectrograms")
    lay = layout_for(videos, scale, label_w, gap, sound=spectrograms is not None)
    sheet = np.empty((*lay.size, 3), np.uint8)
    sheet[:] = BACKGROUND
    for r, video in enumerate(videos):
        big = video.repeat(scale, axis=1).repeat(scale, axis=2)
        for f, frame in enumerate(big):
            top, left = lay.cell(r, f)
            sheet[top : top + lay.frame_h, left : left + lay.frame_w] = frame
    if spectrograms is not None:
        mels = [np.asarray(m, np.float32) for m in spectrograms]
        mels = [m[0] if m.ndim == 3 else m for m in mels]  # the first channel: [frames, mels]
        hi = max(float(m.max()) for m in mels)
        lo = max(min(float(m.min()) for m in mels), hi - 12.0)  # 12 log units (about 100 dB) below the loudest
        for r, mel in enumerate(mels):
            top, left, h, w = lay.spectrogram(r)
            sheet[top : top + h, left : left + w] = spectrogram_image(mel, lo, hi, (h, w))
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for r, label in enumerate(labels):
        top, _ = lay.cell(r, 0)
        text = _fit(draw, font, str(label), label_w - 2 * gap - 4)
        box = draw.textbbox((0, 0), text, font=font)
        y = top + max(0, (lay.frame_h - (box[3] - box[1])) // 2)
        draw.text((gap + 4, y), text, fill=TEXT, font=font)
    return np.asarray(image), lay


# a dark-to-bright ramp (black, purple, orange, pale yellow): loudness at a glance
RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)


def spectrogram_image(mel: np.ndarray, lo: float, hi: float, size: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3] of a log-mel [frames, mels] between lo and hi: time to the right (nearest, so an
    onset stays sharp), low mels at the bottom."""
    from PIL import Image

    level = np.clip((mel - lo) / max(hi - lo, 1e-6), 0.0, 1.0).T[::-1]  # [mels, frames], low at the bottom
    picture = Image.fromarray((level * 255).astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST)
    x = np.asarray(picture, np.float32) / 255 * (len(RAMP) - 1)
    i = np.minimum(x.astype(int), len(RAMP) - 2)
    frac = (x - i)[..., None]
    return np.rint(RAMP[i] * (1 - frac) + RAMP[i + 1] * frac).astype(np.uint8)


def _fit(draw, font, text: str, width: int) -> str:
    """The label, shortened with an ellipsis until it fits the label panel."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_contact_sheet(
    path: str | Path, videos, labels: list[str], scale: int = 4, spectrograms: list[np.ndarray] | None = None
) -> Path:
    """Write the sheet as PNG (parent folders created) and return its path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet, _ = contact_sheet(videos, labels, scale=scale, spectrograms=spectrograms)
    Image.fromarray(sheet).save(path, format="PNG")
    return path
