"""Contact sheets show the sampled frames: the sheet's cells are compared with the mp4s the
evaluation writes (decoded with PyAV), row by row and frame by frame."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from opensora_lite.data.synthetic import COLOURS, render_frame
from opensora_lite.data.video import decode_window, probe
from opensora_lite.eval.contact_sheet import BACKGROUND, contact_sheet, layout_for, save_contact_sheet
from opensora_lite.train.evaluation import save_samples


def _clips(n: int = 3, frames: int = 5, size: int = 16) -> list[np.ndarray]:
    out = []
    for i, colour in enumerate(list(COLOURS)[:n]):
        cx = [3 + 2.2 * t + i for t in range(frames)]  # a shape moving right, a different start per clip
        out.append(np.stack([render_frame(size, size, "circle", COLOURS[colour], 8, x, 3, 20) for x in cx]))
    return out


def _blocks(img: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks: an image enlarged f times (nearest) back at its own size."""
    h, w, _ = img.shape
    return img.reshape(h // f, f, w // f, f, 3).astype(np.float32).mean(axis=(1, 3))


def test_sheet_cells_match_the_decoded_sample_mp4s(tmp_path):
    clips = _clips()
    captions = ["a fast red circle moving right", "a fast green circle moving right", "a fast blue circle moving right"]
    mp4s = save_samples(np.stack(clips), captions, tmp_path / "samples", "t2v", 8, fps=8.0)
    path = save_contact_sheet(tmp_path / "contact_sheet_t2v.png", clips, captions)
    sheet = np.asarray(Image.open(path).convert("RGB"))
    lay = layout_for(clips)
    assert sheet.shape[:2] == lay.size and lay.rows == 3 and lay.frames == 5
    for row, mp4 in enumerate(mp4s):
        data = mp4.read_bytes()
        info = probe(data)
        decoded = decode_window(data, 0, info.num_frames, 1, (info.height, info.width), seek=False)
        enlarge = info.height // 16  # write_video enlarges by an integer factor to be viewable
        assert len(decoded) == lay.frames
        for frame in range(lay.frames):
            top, left = lay.cell(row, frame)
            cell = sheet[top : top + lay.frame_h, left : left + lay.frame_w]
            from_sheet, from_mp4 = _blocks(cell, lay.scale), _blocks(decoded[frame], enlarge)
            assert np.abs(from_sheet - from_mp4).mean() < 4.0, (row, frame)  # H.264 at crf 18
            other = _blocks(decoded[(frame + 2) % lay.frames], enlarge)  # the shape elsewhere: a wrong frame
            assert np.abs(from_sheet - other).mean() > 2 * np.abs(from_sheet - from_mp4).mean()
        label = sheet[lay.cell(row, 0)[0] : lay.cell(row, 0)[0] + lay.frame_h, : lay.label_w]
        assert (np.abs(label.astype(int) - BACKGROUND).sum(-1) > 200).sum() > 50, "the prompt is written"


def test_sheet_rejects_mismatched_inputs():
    clips = _clips(2)
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(clips, ["one label"])
    with pytest.raises(ValueError, match="one shape"):
        contact_sheet([clips[0], clips[1][:3]], ["a", "b"])
