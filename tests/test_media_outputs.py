"""In-memory media writers write into memory, never a file named after a missing value.

PyAV names an in-memory output "<none>"; a muxer that writes by file name (image2) then creates a
file called "<none>" in the working directory -- how a stray PNG of that name reached the repository."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from opensora_lite.data.video import FILE_WRITING_MUXERS, encode_image, encode_mp4, open_memory_output


def test_images_and_videos_encode_in_memory_and_write_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a file-writing muxer would drop "<none>"
    frame = np.zeros((40, 56, 3), np.uint8)
    frame[10:20, 5:30] = (200, 40, 90)
    png = encode_image(frame)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with av.open(io.BytesIO(png)) as container:
        assert np.array_equal(next(container.decode(video=0)).to_ndarray(format="rgb24"), frame)  # lossless
    assert len(encode_mp4(np.stack([frame] * 3), 8.0)) > 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("muxer", sorted(FILE_WRITING_MUXERS))
def test_file_writing_muxers_are_refused_for_memory_outputs(muxer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="writes files by name"):
        open_memory_output(io.BytesIO(), muxer)
    assert list(tmp_path.iterdir()) == []
