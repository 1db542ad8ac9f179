"""Video encoding and windowed decoding with PyAV (FFmpeg bundled; no torchvision)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np


class VideoDecodeError(ValueError):
    """A video that cannot be decoded into the requested window (corrupt, empty, too short)."""


# Muxers that write files named after the output's URL rather than through the I/O object they are
# given. PyAV names an in-memory output "<none>", so with one of these a file called "<none>" appears in
# the working directory and the buffer stays empty (how a PNG named "<none>" once reached the repository).
FILE_WRITING_MUXERS = frozenset({"image2", "segment", "hls", "dash", "tee"})


def open_memory_output(buf: io.BytesIO, format: str):
    """An av output container writing into `buf`; refuses muxers that would write a file instead."""
    if format in FILE_WRITING_MUXERS:
        raise ValueError(f"the {format!r} muxer writes files by name, not into memory: use 'image2pipe' for images")
    return av.open(buf, mode="w", format=format)


def encode_image(frame: np.ndarray, codec: str = "png") -> bytes:
    """One uint8 [H, W, 3] frame as image bytes (PNG by default), in memory."""
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
    buf = io.BytesIO()
    with open_memory_output(buf, "image2pipe") as container:
        stream = container.add_stream(codec)
        stream.width, stream.height, stream.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def encode_mp4(
    frames: np.ndarray,
    fps: float,
    crf: int = 18,
    gop: int | None = None,
    bframes: bool = False,
    rotation: int = 0,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
) -> bytes:
    """H.264 mp4 bytes from uint8 frames [T, H, W, 3] (H and W even, as yuv420p requires). `gop`: frames
    between keyframes (x264's default 250 otherwise); `bframes`: reordered frames, as cameras and web
    encoders produce (the default low-latency setting has none); `rotation`: a display matrix saying the
    stored frames are shown turned `rotation` degrees counter-clockwise (what a phone writes when it
    stores a portrait video landscape); `audio`: a sound track, [channels, samples] (mono or stereo)
    float in [-1, 1] or int16, at `sample_rate`, starting with the first frame, written as AAC."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 yuv420p needs even sizes, got {h}x{w}")
    buf = io.BytesIO()
    with open_memory_output(buf, "mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        if not bframes:
            stream.options["tune"] = "zerolatency"
        if gop:
            stream.codec_context.gop_size = gop
        if rotation:
            stream.set_display_rotation(rotation)
        sound = None
        if audio is not None:
            from opensora_lite.data.audio import mux_audio

            _, sound = mux_audio(container, audio, sample_rate)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        for packet in sound or ():  # the muxer interleaves the two streams by time
            container.mux(packet)
    return buf.getvalue()


@dataclass
class VideoInfo:
    """What a video holds, as it is displayed: `height` and `width` are upright (swapped from the stored
    frames' when `rotation` is 90 or 270)."""

    num_frames: int
    fps: float
    height: int
    width: int
    rotation: int = 0  # degrees counter-clockwise the stored frames are turned for display: 0, 90, 180, 270

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps else 0.0


def frame_rotation(frame: av.VideoFrame) -> int:
    """The display rotation of a decoded frame (its display matrix, e.g. a phone's portrait flag), as
    0, 90, 180 or 270 degrees counter-clockwise; angles in between are taken to the nearest quarter."""
    return (round(frame.rotation / 90) % 4) * 90


def upright_size(height: int, width: int, rotation: int) -> tuple[int, int]:
    """(height, width) as displayed, from the stored frame's size and its rotation."""
    return (width, height) if rotation % 180 else (height, width)


def frame_to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None, rotation: int | None = None) -> np.ndarray:
    """A decoded frame as upright uint8 RGB [h, w, 3], resized (area filter) to `size` = (h, w) as
    displayed (None: full size). Every decode path goes through here, so a clip stored landscape with a
    90-degree display rotation is read portrait, the way it is shown."""
    rotation = frame_rotation(frame) if rotation is None else rotation
    if size is None:
        size = upright_size(frame.height, frame.width, rotation)
    h, w = upright_size(*size, rotation)  # the stored frame's orientation
    rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation else rgb


def probe(data: bytes) -> VideoInfo:
    """Frame count, fps, upright size and display rotation of an encoded video (the rotation is read from
    the first decoded frame; all frames are decoded when the container does not give their number)."""
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            frames = container.decode(stream)
            first = next(frames, None)
            rotation = frame_rotation(first) if first is not None else 0
            n = stream.frames or ((first is not None) + sum(1 for _ in frames))
            height, width = upright_size(stream.height, stream.width, rotation)
            return VideoInfo(num_frames=n, fps=fps, height=height, width=width, rotation=rotation)
    except (av.error.FFmpegError, IndexError) as exc:
        raise VideoDecodeError(f"cannot probe video: {exc}") from exc


def resize_crop_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int, int, int]:
    """Scaled (h, w) that covers `target` keeping aspect, and the (top, left) of the centre crop."""
    th, tw = target
    scale = max(th / height, tw / width)
    nh, nw = max(th, round(height * scale)), max(tw, round(width * scale))
    return nh, nw, (nh - th) // 2, (nw - tw) // 2


def decode_window(
    data: bytes,
    start: int,
    num_frames: int,
    stride: int,
    size: tuple[int, int],
    threads: int = 1,
    seek: bool = True,
) -> np.ndarray:
    """Decode frames start, start+stride, ... (num_frames of them), resized (area filter) and centre
    cropped to `size` = (h, w). Returns uint8 [T, h, w, 3].

    With `seek`, decoding starts at the keyframe before `start` and frame positions come from
    timestamps; without, it starts at frame 0 and counts. Either way only the wanted frames are
    converted to RGB (at the reduced size, upright: `frame_to_rgb`), and decoding stops after the last one."""
    wanted = {start + i * stride for i in range(num_frames)}
    last = start + (num_frames - 1) * stride
    out: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_count = threads
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            crop = None  # (nh, nw, top, left) from the first frame's upright size
            t0, base = stream.start_time or 0, stream.time_base
            by_pts = seek and start > 0 and fps > 0 and base is not None
            if by_pts:  # lands on the last keyframe at or before the first wanted frame
                container.seek(t0 + int(start / fps / base), stream=stream, backward=True, any_frame=False)
            for count, frame in enumerate(container.decode(stream)):
                if by_pts and frame.pts is None:  # cannot place frames after a seek: count from 0 instead
                    return decode_window(data, start, num_frames, stride, size, threads, seek=False)
                index = round(float((frame.pts - t0) * base) * fps) if by_pts else count
                if index in wanted:
                    if crop is None:
                        rotation = frame_rotation(frame)
                        crop = resize_crop_size(*upright_size(frame.height, frame.width, rotation), size)
                    nh, nw, top, left = crop
                    rgb = frame_to_rgb(frame, (nh, nw), rotation)
                    out.append(rgb[top : top + size[0], left : left + size[1]])
                    wanted.discard(index)
                if index >= last:
                    break
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"decode failed: {exc}") from exc
    if len(out) != num_frames:
        raise VideoDecodeError(
            f"video has too few frames: got {len(out)} of {num_frames} (start {start}, stride {stride})"
        )
    return np.stack(out)


def temporal_stride(fps: float, target_fps: float) -> int:
    """Open-Sora's rule: keep every ceil(fps / target_fps)-th frame."""
    return max(1, math.ceil(fps / target_fps - 1e-6)) if fps > 0 else 1


def write_video(
    path, frames: np.ndarray, fps: float, min_side: int = 128, audio: np.ndarray | None = None, sample_rate: int = 16000
) -> None:
    """Write uint8 frames [T, H, W, 3] as mp4, enlarged by an integer factor (nearest) to be viewable, with
    `audio` ([channels, samples] at `sample_rate`, from the first frame) as an AAC track when given."""
    scale = max(1, -(-min_side // min(frames.shape[1:3])))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with open(path, "wb") as fh:
        fh.write(encode_mp4(np.ascontiguousarray(frames), fps, audio=audio, sample_rate=sample_rate))
