"""A video's sound: decoded once with PyAV, resampled, aligned to the video's frames, windowed like them.

Time 0 is the video's first frame. `extract_audio` decodes a container's first audio track, resamples
it to the configured rate and channel layout (FFmpeg's swresample; mono to stereo copies the channel,
stereo to mono averages the two, other layouts take FFmpeg's downmix) and places it on the video's time
line: sample 0 is heard with frame 0 (a track that starts later is preceded by silence, one that
starts earlier is cut), and the track is cut or padded with silence to the video's duration,
round(num_frames * rate / fps) samples. Ingest stores that track beside the video as a 16-bit PCM WAV
member of the shard (`<key>.wav`); the loader reads a window's samples straight from it (no decode).

The window rule (`window_samples`): a video window of `num_frames` frames taken every `stride` frames
from frame `start` covers span = num_frames * stride / fps seconds (the time it lasts when played at
its own rate, fps / stride) from start / fps. Its audio is the samples

    first = round(start * rate / fps),   count = round(num_frames * stride * rate / fps)

rounded half up, in exact rational arithmetic (fps as a fraction: 29.97 is 30000/1001). The count
depends on the span alone, never on where the window starts, so every window of one length at one
frame rate has the same number of samples. Samples past the end of the stored track (at most the
stride's last frames and one sample of rounding) read as silence.

**Context for the front end.** A log-mel front end's STFT is centred: its first and last frames are
centred on the window's first and last samples and reach n_fft // 2 samples past them. Given the window
alone, the STFT pads it with its own reflection, and a sound that goes on across the cut (a tone) is
folded back on itself there: a kink that spreads energy over every frequency, so every window cut from
the middle of a clip gained a broadband burst in its first and last log-mel frames that no listener
would hear (measured on Shapes with sound: the high mels 4 to 5 log units above the silence they sit
at in the window's middle; a model trained on such windows generated the burst, and the evaluator
heard it as a click in every clip). `audio_window(..., margin=m)` reads m more samples of the track on
each side (silence before its start and past its end), the loader's `data.audio.context`; the batch
carries them as `audio_context` beside `audio`, and the front end (`LogMel(wave, context=m)`) computes
the window's frames from the real neighbouring sound: the frames the whole track's log-mel has there.
"""

from __future__ import annotations

import io
import math
import wave
from fractions import Fraction

import av
import numpy as np

from opensora_lite.data.video import VideoDecodeError
from opensora_lite.registry import AUDIO_LAYOUTS

LAYOUTS = AUDIO_LAYOUTS  # channel layouts by name (FFmpeg's) -> channels


class AudioDecodeError(VideoDecodeError):
    """An audio stream (or a stored track) that cannot be decoded: the sample is skipped as corrupt_audio."""


def exact_fps(fps: float) -> Fraction:
    """A frame rate as a fraction: float rates read from containers (29.97002997...) become 30000/1001."""
    return Fraction(fps).limit_denominator(1001)


def _round_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


def window_samples(start: int, num_frames: int, stride: int, fps: float, rate: int) -> tuple[int, int]:
    """(first sample, sample count) of the audio of a video window (module docstring: the window rule)."""
    per_frame = Fraction(rate) / exact_fps(fps)
    return _round_half_up(start * per_frame), _round_half_up(num_frames * stride * per_frame)


def track_samples(num_frames: int, fps: float, rate: int) -> int:
    """Samples of a track that lasts as long as a video of `num_frames` frames at `fps`."""
    return _round_half_up(num_frames * Fraction(rate) / exact_fps(fps))


def extract_audio(data: bytes, rate: int, layout: str, num_frames: int | None = None) -> np.ndarray | None:
    """A container's first audio track as int16 [channels, samples] at `rate` in `layout`, aligned to its
    video (sample 0 with the first frame) and as long as the video (`num_frames`: the video's frame
    count; None: probed). None when the container has no audio track (or no video to align it to, an
    audio-only file: then sample 0 is the track's start). Raises AudioDecodeError when the track
    cannot be decoded."""
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            video = container.streams.video[0] if container.streams.video else None
            origin = 0.0
            fps = 0.0
            if video is not None:
                origin = float((video.start_time or 0) * video.time_base) if video.time_base else 0.0
                fps = float(video.average_rate or video.guessed_rate or 0)
                num_frames = num_frames or video.frames or None
            # a mono track becomes stereo as two full copies (FFmpeg's upmix would lower each by 3 dB);
            # stereo becomes mono as the mean of the channels (FFmpeg's downmix)
            copies = 2 if layout == "stereo" and stream.codec_context.channels == 1 else 1
            resampler = av.AudioResampler(format="s16p", layout="mono" if copies == 2 else layout, rate=rate)
            chunks, first_time = [], None
            for frame in container.decode(stream):
                if first_time is None and frame.pts is not None:
                    first_time = float(frame.pts * frame.time_base)
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    except (av.error.FFmpegError, ValueError) as exc:
        raise AudioDecodeError(f"audio decode failed: {exc}") from exc
    if not chunks:
        raise AudioDecodeError("the audio stream holds no samples")
    pcm = np.concatenate(chunks, axis=1).astype(np.int16, copy=False)
    if copies == 2:
        pcm = np.repeat(pcm, 2, axis=0)
    offset = round(((first_time or 0.0) - origin) * rate) if video is not None else 0
    if offset > 0:  # the track starts after the first frame: silence until it does
        pcm = np.concatenate([np.zeros((pcm.shape[0], offset), np.int16), pcm], axis=1)
    elif offset < 0:  # it starts before: what precedes the first frame is cut
        pcm = pcm[:, -offset:]
    if video is not None and fps > 0 and num_frames:
        total = track_samples(num_frames, fps, rate)
        pcm = pcm[:, :total]
        if pcm.shape[1] < total:
            pcm = np.pad(pcm, ((0, 0), (0, total - pcm.shape[1])))
    return np.ascontiguousarray(pcm)


def encode_wav(pcm: np.ndarray, rate: int) -> bytes:
    """int16 [channels, samples] as WAV bytes (16-bit PCM, interleaved)."""
    if pcm.dtype != np.int16 or pcm.ndim != 2:
        raise ValueError(f"expected int16 [channels, samples], got {pcm.dtype} {pcm.shape}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(pcm.shape[0])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm.T).astype("<i2").tobytes())
    return buf.getvalue()


def wav_format(data: bytes) -> tuple[int, int, int]:
    """(rate, channels, samples) of WAV bytes; raises AudioDecodeError when they are not 16-bit PCM WAV."""
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            if w.getsampwidth() != 2:
                raise AudioDecodeError(f"stored track is {8 * w.getsampwidth()}-bit, not 16-bit PCM")
            return w.getframerate(), w.getnchannels(), w.getnframes()
    except (wave.Error, EOFError) as exc:
        raise AudioDecodeError(f"unreadable stored track: {exc}") from exc


def read_wav_window(data: bytes, first: int, count: int) -> np.ndarray:
    """Samples first .. first + count - 1 of WAV bytes as int16 [channels, count], read without the rest;
    samples before the start (a negative `first`) and past the end are silence. Raises AudioDecodeError
    on a damaged or cut-off track."""
    if first < 0:
        head = read_wav_window(data, 0, max(0, count + first))
        return np.ascontiguousarray(np.pad(head, ((0, 0), (min(-first, count), 0))))
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, total = w.getnchannels(), w.getnframes()
            have = max(0, min(count, total - first))
            raw = b""
            if have:
                w.setpos(first)
                raw = w.readframes(have)
    except (wave.Error, EOFError) as exc:
        raise AudioDecodeError(f"unreadable stored track: {exc}") from exc
    if len(raw) != have * channels * 2:
        raise AudioDecodeError(f"stored track is cut off: {len(raw)} bytes where {have * channels * 2} were due")
    pcm = np.frombuffer(raw, "<i2").reshape(-1, channels).T.astype(np.int16)
    if have < count:
        pcm = np.pad(pcm, ((0, 0), (0, count - have)))
    return np.ascontiguousarray(pcm)


def audio_window(
    media: bytes | None,
    wav: bytes | None,
    rate: int,
    layout: str,
    start: int,
    num_frames: int,
    stride: int,
    fps: float,
    margin: int = 0,
) -> tuple[np.ndarray, bool]:
    """(int16 [channels, margin + count + margin], has sound) of a video window (the window rule), with
    `margin` samples of the track's context on each side (module docstring; silence outside the track):
    from the stored track `wav` when it has the wanted rate and layout, else decoded from the container
    `media` (the whole track, then windowed: slower, the same samples). A clip without sound (no audio
    stream, or `media` and `wav` None: known from its metadata) gives silence of the same length. Raises
    AudioDecodeError."""
    first, count = window_samples(start, num_frames, stride, fps, rate)
    first, count = first - margin, count + 2 * margin
    if wav is not None:
        stored_rate, channels, _ = wav_format(wav)
        if (stored_rate, channels) == (rate, LAYOUTS[layout]):
            return read_wav_window(wav, first, count), True
    pcm = extract_audio(media, rate, layout) if media is not None else None
    if pcm is None:
        return np.zeros((LAYOUTS[layout], count), np.int16), False
    before = min(max(0, -first), count)
    window = pcm[:, max(0, first) : max(0, first + count)]
    window = np.pad(window, ((0, 0), (before, count - before - window.shape[1])))
    return np.ascontiguousarray(window), True


def collate_audio(tracks: list[np.ndarray], has_audio: list[bool], margin: int = 0) -> dict:
    """Batch entries of windows' sound (int16 [channels, margin + samples + margin] each, `margin`: the
    context read on each side): `audio` float [B, channels, samples] in [-1, 1], the windows alone,
    padded with silence to the longest window (windows of one bucket differ in length only where clips
    of different frame rates share it), `audio_samples` [B] the samples of each window, `has_audio` [B]
    false for clips without sound (their audio is silence); with a margin also `audio_context` [B,
    channels, margin + samples + margin], each window with its context (the front end's input:
    `front_end_input`), padded with silence after its own end."""
    import torch  # here: ingest (osl-data) reads sound without loading torch

    counts = [t.shape[1] - 2 * margin for t in tracks]
    longest = max(counts)
    audio = np.zeros((len(tracks), tracks[0].shape[0], longest), np.float32)
    for i, (t, n) in enumerate(zip(tracks, counts)):
        audio[i, :, :n] = t[:, margin : margin + n] / 32768.0
    out = {
        "audio": torch.from_numpy(audio),
        "audio_samples": torch.tensor(counts, dtype=torch.long),
        "has_audio": torch.tensor(has_audio, dtype=torch.bool),
    }
    if margin:
        context = np.zeros((len(tracks), tracks[0].shape[0], longest + 2 * margin), np.float32)
        for i, t in enumerate(tracks):
            context[i, :, : t.shape[1]] = t / 32768.0
        out["audio_context"] = torch.from_numpy(context)
    return out


def front_end_input(batch: dict):
    """(waveform, context) for an audio autoencoder's front end from a batch: its windows with their
    context (`audio_context`, the margin on each side) when the loader read one, else the windows
    alone (context 0: the front end reflects each window at its edges)."""
    if "audio_context" not in batch:
        return batch["audio"], 0
    wave = batch["audio_context"]
    return wave, (wave.shape[-1] - batch["audio"].shape[-1]) // 2


def mux_audio(container, pcm: np.ndarray, rate: int, codec: str = "aac", bit_rate: int | None = None):
    """Add an audio stream to an output container and yield its packets for float [channels, samples]
    (or int16) audio: the caller muxes them (interleaving with video is the muxer's job)."""
    channels = pcm.shape[0]
    layout = {v: k for k, v in LAYOUTS.items()}.get(channels)
    if layout is None:
        raise ValueError(f"audio must be mono or stereo [channels, samples], got {pcm.shape}")
    samples = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
    stream = container.add_stream(codec, rate=rate, layout=layout)
    if bit_rate:
        stream.bit_rate = bit_rate
    return stream, _encode_audio(stream, np.clip(samples, -1.0, 1.0), rate, layout)


def _encode_audio(stream, samples: np.ndarray, rate: int, layout: str):
    size = stream.codec_context.frame_size or 1024  # AAC takes 1024 samples a frame
    for i in range(0, samples.shape[1], size):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, i : i + size]), format="fltp", layout=layout)
        frame.sample_rate, frame.pts = rate, i
        yield from stream.encode(frame)
    yield from stream.encode(None)
