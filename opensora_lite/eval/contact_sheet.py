"""Contact sheets: many short clips in one picture, one row per clip, one column per frame.

What a user looks at to see what a model learned (text-to-video samples, image-to-video samples,
autoencoder reconstructions) without opening mp4s one at a time. Each row starts with its label
(the prompt) written on a dark panel; frames are enlarged by an integer factor (nearest neighbour,
so every generated pixel stays a flat block) and separated by a thin gap.
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

    def cell(self, row: int, frame: int) -> tuple[int, int]:
        """(top, left) pixel of one enlarged frame."""
        return self.gap + row * (self.frame_h + self.gap), self.label_w + self.gap + frame * (self.frame_w + self.gap)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the whole sheet."""
        return self.gap + self.rows * (self.frame_h + self.gap), self.label_w + self.gap + self.frames * (
            self.frame_w + self.gap
        )


def layout_for(videos: list[np.ndarray], scale: int = 4, label_w: int = 240, gap: int = 2) -> SheetLayout:
    t, h, w, _ = videos[0].shape
    return SheetLayout(len(videos), t, h * scale, w * scale, scale, label_w, gap)


def contact_sheet(
    videos: list[np.ndarray] | np.ndarray, labels: list[str], scale: int = 4, label_w: int = 240, gap: int = 2
) -> tuple[np.ndarray, SheetLayout]:
    """uint8 sheet [H, W, 3] of clips (each uint8 [T, h, w, 3], all the same shape) with their labels."""
    from PIL import Image, ImageDraw, ImageFont

    videos = [np.asarray(v) for v in videos]
    if not videos:
        raise ValueError("a contact sheet needs at least one clip")
    if len(labels) != len(videos):
        raise ValueError(f"{len(videos)} clips but {len(labels)} labels")
    if any(v.shape != videos[0].shape or v.dtype != np.uint8 or v.ndim != 4 for v in videos):
        raise ValueError("every clip must be uint8 [T, h, w, 3] of one shape")
    lay = layout_for(videos, scale, label_w, gap)
    sheet = np.empty((*lay.size, 3), np.uint8)
    sheet[:] = BACKGROUND
    for r, video in enumerate(videos):
        big = video.repeat(scale, axis=1).repeat(scale, axis=2)
        for f, frame in enumerate(big):
            top, left = lay.cell(r, f)
            sheet[top : top + lay.frame_h, left : left + lay.frame_w] = frame
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


def _fit(draw, font, text: str, width: int) -> str:
    """The label, shortened with an ellipsis until it fits the label panel."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def save_contact_sheet(path: str | Path, videos, labels: list[str], scale: int = 4) -> Path:
    """Write the sheet as PNG (parent folders created) and return its path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet, _ = contact_sheet(videos, labels, scale=scale)
    Image.fromarray(sheet).save(path, format="PNG")
    return path
