"""Sound in the data path: real mp4 files with AAC tracks (PyAV), real tar shards, the real loader.

The window rule (data/audio.py): a video window of n frames every `stride` from frame `start` gets the
samples round(start * rate / fps) .. + round(n * stride * rate / fps), rounded half up."""

import io
import json
import tarfile
from collections import Counter

import av
import numpy as np
import pytest
from conftest import typed

from opensora_lite.config.schema import AudioDataConfig, ShapesConfig
from opensora_lite.config.validate_audio import validate_shapes_sound
from opensora_lite.data.audio import extract_audio, track_samples, window_samples
from opensora_lite.data.buckets import BucketTable
from opensora_lite.data.ingest import write_shards
from opensora_lite.data.loader import BucketedVideoStream, LoaderState, expand_shards
from opensora_lite.data.synthetic import COLOURS, PITCHES, render_clip, write_shapes_shards
from opensora_lite.data.video import decode_window, encode_mp4, temporal_stride
from opensora_lite.errors import ConfigError

RATE = 16000
AUDIO = AudioDataConfig(enabled=True, sample_rate=RATE, layout="stereo")
TABLE = {"16px": {5: [1.0, 3]}}


def pitch(x: np.ndarray, rate: int = RATE) -> float:
    """The strongest frequency of a mono signal (Hz)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=8 * len(x)))
    return float(np.argmax(spectrum)) * rate / (8 * len(x))


def click_at(x: np.ndarray) -> int:
    """The sample where a click starts: the first where the high-passed energy (8-sample window, looking
    ahead) reaches half its peak. The tones' slope is far below the 3 kHz click's."""
    energy = np.convolve(np.diff(x, prepend=x[0]) ** 2, np.ones(8), "full")[7:]
    return int(np.argmax(energy >= 0.5 * energy.max()))


def members(shards) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of every sample of the shards."""
    out: dict[str, dict[str, bytes]] = {}
    for path in shards:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def av_shapes(tmp_path_factory):
    """Shapes with sound: every clip bounces; 8 and 16 fps (stride 1 and 2 at 8 fps), two shards."""
    out = tmp_path_factory.mktemp("av_shapes")
    cfg = ShapesConfig(num_clips=16, clips_per_shard=8, seed=5, bounce=1.0, sound=True, fps=[8.0, 16.0])
    cfg.sizes = [[32, 32]]
    write_shapes_shards(out, cfg, progress=False)
    return out


def test_window_rule_fixes_the_count_by_the_span_alone():
    assert window_samples(0, 5, 1, 24.0, RATE) == (0, 3333)  # 5/24 s = 3333.3 samples
    assert window_samples(1, 5, 1, 24.0, RATE) == (667, 3333)  # starts at 666.7: rounded, count unchanged
    assert window_samples(7, 5, 2, 16.0, RATE) == (7000, 10000)  # stride 2 at 16 fps: 10 source frames
    ntsc = 30000 / 1001  # a container's float rate: read as the fraction 30000/1001
    assert window_samples(1, 1, 1, ntsc, RATE) == (534, 534)  # 533.87
    assert window_samples(3, 1, 1, 48.0, 8000)[0] == 500  # 3 * 8000 / 48 = 500 exactly
    assert window_samples(1, 1, 1, 32.0, 8000) == (250, 250)
    assert window_samples(1, 1, 1, 48.0 / 5, 8000)[0] == 833  # 833.33
    assert window_samples(1, 1, 1, 16.0, 8) == (1, 1)  # 0.5 rounds half up
    assert {window_samples(s, 9, 3, 23.976, RATE)[1] for s in range(60)} == {18018}
    assert track_samples(20, 8.0, RATE) == 40000


def test_mp4_with_audio_is_written_and_read_back(tmp_path):
    from opensora_lite.data.video import write_video

    fps, n, source_rate = 12.0, 18, 44100
    t = np.arange(round(n / fps * source_rate)) / source_rate
    left, right = 0.3 * np.sin(2 * np.pi * 440.0 * t), 0.3 * np.sin(2 * np.pi * 660.0 * t)
    click = round(10 / fps * source_rate)  # at frame 10
    for ch in (left, right):
        ch[click : click + 200] += 0.6 * np.exp(-np.arange(200) / 30) * np.sin(np.arange(200) * 0.1 * np.pi)
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    path = tmp_path / "clip.mp4"
    write_video(
        path, frames, fps, min_side=32, audio=np.stack([left, right]).astype(np.float32), sample_rate=source_rate
    )
    data = path.read_bytes()
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        assert (container.streams.audio[0].rate, container.streams.audio[0].channels) == (source_rate, 2)
    pcm = extract_audio(data, RATE, "stereo") / 32768.0
    assert pcm.shape == (2, track_samples(n, fps, RATE)) == (2, 24000)
    calm = slice(0, 12000)  # before the click
    assert abs(pitch(pcm[0, calm]) - 440.0) < 2 and abs(pitch(pcm[1, calm]) - 660.0) < 2  # channels kept apart
    expected = window_samples(10, 1, 1, fps, RATE)[0]
    assert abs(click_at(pcm[0]) - expected) <= 16  # 1 ms at 16 kHz, after AAC and resampling
    mono = extract_audio(data, 8000, "mono") / 32768.0
    assert mono.shape == (1, 12000) and abs(click_at(mono[0]) - window_samples(10, 1, 1, fps, 8000)[0]) <= 8


def test_audio_window_after_a_seek_matches_the_video_window(av_shapes):
    """A window from the middle of a clip: the decoder seeks for the frames, the audio is the track's
    slice by the rule, and the click of the bounce lands where the contact frame lies in the window."""
    from opensora_lite.data.audio import audio_window

    clips = members(expand_shards(str(av_shapes)))
    checked = 0
    for m in clips.values():
        meta = json.loads(m["json"])
        fps, n, contact = meta["fps"], meta["num_frames"], meta["contact_frame"]
        stride = temporal_stride(fps, 8.0)
        frames_in_window = 4
        start = contact - stride * 2  # the contact frame is the window's third
        if start < 1 or start + (frames_in_window - 1) * stride >= n:
            continue
        full = decode_window(m["mp4"], 0, n, 1, (32, 32), seek=False)
        window = decode_window(m["mp4"], start, frames_in_window, stride, (32, 32))
        assert np.array_equal(window, full[start : start + frames_in_window * stride : stride])
        track = extract_audio(m["mp4"], RATE, "stereo", n)
        first, count = window_samples(start, frames_in_window, stride, fps, RATE)
        for media, wav in ((None, m["wav"]), (m["mp4"], None)):  # the stored track, and decoded from the mp4
            pcm, has = audio_window(media, wav, RATE, "stereo", start, frames_in_window, stride, fps)
            assert has and pcm.shape == (2, count) and np.array_equal(pcm, track[:, first : first + count])
        at = click_at(pcm[0] / 32768.0)
        assert abs(at - window_samples(2 * stride, 1, 1, fps, RATE)[0]) <= 16  # within 1 ms of the contact frame
        checked += 1
    assert checked >= 4


def _stream(shards, audio_cfg=AUDIO, **kw):
    return BucketedVideoStream(shards, BucketTable(TABLE, [1.0], 2), 8.0, seed=0, audio=audio_cfg, **kw)


def test_loader_batches_carry_each_video_windows_audio(av_shapes):
    shards = expand_shards(str(av_shapes))
    clips = members(shards)
    it = iter(_stream(shards))
    seen = 0
    for _ in range(4):
        batch = next(it)
        assert batch["audio"].shape[:2] == (3, 2) and batch["has_audio"].all()
        for i, key in enumerate(batch["keys"]):
            meta = json.loads(clips[key]["json"])
            stride = temporal_stride(meta["fps"], 8.0)
            count = int(batch["audio_samples"][i])
            assert count == window_samples(0, 5, stride, meta["fps"], RATE)[1] == 10000  # 5 frames at 8 fps
            track = extract_audio(clips[key]["mp4"], RATE, "stereo") / 32768.0
            track = np.pad(track, ((0, 0), (0, count)))  # a window may end past the track: silence
            got = batch["audio"][i].numpy()
            # the window's start frame is the one whose audio slice this is, and whose frames the video holds
            starts = [
                s
                for s in range(meta["num_frames"] - (4 * stride))
                if np.array_equal(track[:, window_samples(s, 5, stride, meta["fps"], RATE)[0] :][:, :count], got)
            ]
            assert len(starts) == 1
            frames = decode_window(clips[key]["mp4"], starts[0], 5, stride, (16, 16))
            video = batch["video"][i].permute(1, 2, 3, 0).numpy()  # (uint8: the frames as decoded)
            assert np.array_equal(video, frames)
            seen += 1
    assert seen == 12


def test_window_context_gives_the_front_end_the_tracks_frames_and_no_edge_burst(av_shapes):
    """A window cut from the middle of a clip's tone: with the context the loader reads around it
    (data.audio.context, `audio_context`), the front end's log-mel of the window is the whole track's
    log-mel at those frames, and its edge frames are as quiet above the tone as its middle. The window
    alone, reflected at its edges by the centred STFT, gains a broadband burst in its first and last
    frames (the burst a model trained on such windows generated at the start and end of every clip)."""
    import torch

    from opensora_lite.autoencoders.mel import LogMel
    from opensora_lite.config.schema import MelConfig
    from opensora_lite.data.audio import audio_window, collate_audio, front_end_input

    mel = LogMel(MelConfig())
    clips = members(expand_shards(str(av_shapes)))
    checked = 0
    for m in clips.values():
        meta = json.loads(m["json"])
        fps, n = meta["fps"], meta["num_frames"]
        stride = temporal_stride(fps, 8.0)
        track = extract_audio(m["mp4"], RATE, "stereo", n)
        # starts whose first sample is a whole hop into the track (so the track's own frames line up), the
        # click (at the contact frame) outside the window, and the window inside the clip
        for start in range(1, n - 4 * stride):
            first, count = window_samples(start, 4, stride, fps, RATE)
            ahead = window_samples(meta["contact_frame"], 1, 1, fps, RATE)[0] - first
            if first % 160 == 0 and first + count + 512 <= track.shape[1] and not -1600 < ahead < count + 1600:
                break
        else:
            continue
        tracks = [audio_window(None, m["wav"], RATE, "stereo", start, 4, stride, fps, margin=512)[0]]
        assert np.array_equal(tracks[0], track[:, first - 512 : first + count + 512])
        batch = collate_audio(tracks, [True], margin=512)
        assert np.array_equal(batch["audio"][0].numpy() * 32768, track[:, first : first + count])
        sound, context = front_end_input(batch)
        assert context == 512 and sound.shape[-1] == count + 1024
        with_context, alone = mel(sound, context)[0, 0], mel(batch["audio"])[0, 0]
        whole = mel(torch.from_numpy(track[None] / 32768.0).float())[0, 0]
        k = first // 160
        assert with_context.shape == alone.shape == (count // 160 + 1, 64)
        assert torch.allclose(with_context, whole[k : k + len(with_context)], atol=1e-3)
        high = slice(40, None)  # above every tone (the highest, 698 Hz, is mel bin ~17): silence but for a click
        middle = with_context[len(with_context) // 2 - 5 : len(with_context) // 2 + 5, high].mean()
        for edge in (0, -1):
            assert with_context[edge, high].mean() < middle + 0.5
            assert alone[edge, high].mean() > middle + 3.0  # the reflection's burst (log units)
        checked += 1
    assert checked >= 4
    # at the track's start the context is silence (no sound before the first frame), as past its end
    m = next(iter(clips.values()))
    meta = json.loads(m["json"])
    pcm, _ = audio_window(None, m["wav"], RATE, "stereo", 0, 4, 1, meta["fps"], margin=512)
    track = extract_audio(m["mp4"], RATE, "stereo", meta["num_frames"])
    count = window_samples(0, 4, 1, meta["fps"], RATE)[1]
    assert not pcm[:, :512].any() and np.array_equal(pcm[:, 512:], track[:, : count + 512])
    decoded, _ = audio_window(m["mp4"], None, RATE, "stereo", 0, 4, 1, meta["fps"], margin=512)
    assert np.array_equal(decoded, pcm)  # decoded from the mp4: the same samples


def test_loader_batches_carry_the_windows_context(av_shapes):
    """data.audio.context: each batch's `audio_context` is its windows with that many samples of the
    track on each side; `audio` is the windows alone, as without it."""
    shards = expand_shards(str(av_shapes))
    plain = next(iter(_stream(shards, audio_cfg=AudioDataConfig(enabled=True, context=0))))
    batch = next(iter(_stream(shards)))
    assert "audio_context" not in plain and AUDIO.context == 512
    assert batch["keys"] == plain["keys"] and np.array_equal(batch["audio"], plain["audio"])
    ctx = batch["audio_context"]
    assert ctx.shape[-1] == batch["audio"].shape[-1] + 1024
    assert np.array_equal(ctx[..., 512:-512], batch["audio"])


def _corrupt_audio_mp4(frames: np.ndarray, fps: float) -> bytes:
    """A real mp4 whose AAC packets hold noise: the container and its video are fine, the sound is not."""
    buf, rng = io.BytesIO(), np.random.default_rng(0)
    with av.open(buf, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=int(fps))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        sound = container.add_stream("aac", rate=RATE, layout="mono")
        for f in frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(video.encode())
        quiet = np.zeros((1, RATE), np.float32)
        for i in range(0, RATE, 1024):
            frame = av.AudioFrame.from_ndarray(quiet[:, i : i + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = RATE, i
            for packet in sound.encode(frame):
                bad = av.Packet(rng.integers(0, 256, packet.size + 16, dtype=np.uint8).tobytes())
                bad.pts, bad.dts, bad.time_base, bad.stream = packet.pts, packet.dts, packet.time_base, sound
                container.mux(bad)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mixed_sources(tmp_path_factory):
    """A folder of clips with captions: two with sound, one without, one whose sound is corrupt."""
    root = tmp_path_factory.mktemp("mixed")
    cfg = ShapesConfig(sizes=[[32, 32]], fps=[8.0], min_seconds=1.5, max_seconds=1.5, speeds={"slow": 0.3})
    rng = np.random.default_rng(1)
    t = np.arange(RATE * 3) / RATE
    for name in ("loud_a", "loud_b", "silent", "broken"):
        frames, meta = render_clip(rng, cfg)
        if name == "silent":
            data = encode_mp4(frames, 8.0)
        elif name == "broken":
            data = _corrupt_audio_mp4(frames, 8.0)
        else:
            data = encode_mp4(frames, 8.0, audio=0.3 * np.sin(2 * np.pi * 500 * t[None, : 2 * RATE]), sample_rate=RATE)
        (root / f"{name}.mp4").write_bytes(data)
        (root / f"{name}.txt").write_text(meta["caption"])
    return root


def test_ingest_keeps_sound_marks_silent_clips_and_skips_corrupt_audio(mixed_sources, tmp_path):
    from opensora_lite.data.ingest import list_folder

    out = tmp_path / "shards"
    report = write_shards(list_folder(mixed_sources), out, 8, workers=1, progress=False, audio=AUDIO)
    assert report.written == 3 and report.skipped == Counter(corrupt_audio=1)
    assert (out / "skipped.tsv").read_text().splitlines()[1:] == [f"{mixed_sources / 'broken.mp4'}\tcorrupt_audio"]
    clips = {json.loads(m["json"])["source"].rsplit("/", 1)[1]: m for m in members(report.shards).values()}
    silent = json.loads(clips["silent.mp4"]["json"])
    assert silent["audio"] is None and "wav" not in clips["silent.mp4"]  # marked, kept
    loud = json.loads(clips["loud_a.mp4"]["json"])
    assert loud["num_frames"] == 12 and loud["audio"] == {"sample_rate": RATE, "channels": 2, "samples": 24000}
    stream = BucketedVideoStream(
        [str(p) for p in report.shards], BucketTable({"16px": {5: [1.0, 1]}}, [1.0], 2), 8.0, 0, audio=AUDIO
    )
    it = iter(stream)
    batches = [next(it) for _ in range(3)]
    by_key = {b["keys"][0]: b for b in batches}
    for key, b in by_key.items():
        source = json.loads(members(report.shards)[key]["json"])["source"]
        assert int(b["audio_samples"][0]) == 10000
        if source.endswith("silent.mp4"):
            assert not b["has_audio"][0] and float(b["audio"].abs().max()) == 0.0
        else:
            assert b["has_audio"][0] and abs(pitch(b["audio"][0, 0].numpy()) - 500) < 3


def test_corrupt_audio_is_a_counted_skip_in_the_loader(mixed_sources, av_shapes, tmp_path):
    """Raw shards (no stored track: decoded from the mp4) with a corrupt AAC stream, and a shard whose
    stored track is cut off: both skipped as corrupt_audio, listed with key and shard."""
    good = members(expand_shards(str(av_shapes)))
    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        samples = {
            "broken.mp4": (mixed_sources / "broken.mp4").read_bytes(),
            "broken.txt": b"a clip",
            "cut.mp4": good["clip0000000"]["mp4"],
            "cut.wav": good["clip0000000"]["wav"][:100],
            "cut.txt": b"a clip",
        }
        for name, data in samples.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream = _stream([str(shard), *expand_shards(str(av_shapes))])
    skipped = Counter()
    rows = []
    it = iter(stream)
    for _ in range(6):  # 18 items: past every sample of the first pass (16 good)
        batch = next(it)
        skipped.update(batch["skipped"])
        rows += batch["skipped_rows"]
    assert skipped["corrupt_audio"] == 2
    assert sorted((k, r) for k, s, r in rows if s == str(shard)) == [
        ("broken", "corrupt_audio"),
        ("cut", "corrupt_audio"),
    ]


def test_loader_resume_is_exact_with_audio(av_shapes, mixed_sources, tmp_path):
    shard = tmp_path / "raw.tar"
    with tarfile.open(shard, "w") as tar:  # the corrupt-sound clip: its failure travels in the state
        for name, data in (("broken.mp4", (mixed_sources / "broken.mp4").read_bytes()), ("broken.txt", b"a clip")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    shards = [str(shard), *expand_shards(str(av_shapes))]
    it = iter(_stream(shards))
    full = [next(it) for _ in range(9)]
    consumed = 6  # past the first pass (16 good clips): the failure is among them
    failed = [f for b in full[:consumed] for f in b["failed"]]
    assert "0/broken" in failed  # (and again in each later pass)
    resumed_stream = _stream(shards, resume=LoaderState(consumed, failed))
    it = iter(resumed_stream)
    rest = [next(it) for _ in range(9 - consumed)]
    for a, b in zip(full[consumed:], rest):
        assert a["keys"] == b["keys"]
        for name in ("video", "audio", "audio_samples", "has_audio"):
            assert np.array_equal(a[name].numpy(), b[name].numpy()), name
    assert resumed_stream.replayed_decodes <= 3  # only what waited in a bucket buffer was decoded


def test_shapes_with_sound_pitch_names_the_colour_and_the_click_marks_the_bounce(tmp_path):
    """One bouncing clip of each colour, written as mp4 + AAC into a real shard, decoded back: the tone's
    pitch names the colour, the click starts at the contact frame, and the contact frame is where the
    shape touches the wall and turns back."""
    for colour in COLOURS:
        cfg = ShapesConfig(num_clips=1, seed=11, bounce=1.0, sound=True, colours=[colour], fps=[24.0], sizes=[[48, 64]])
        write_shapes_shards(tmp_path / colour, cfg, progress=False)
    heard = {}
    for colour in COLOURS:
        (m,) = members(expand_shards(str(tmp_path / colour))).values()
        meta = json.loads(m["json"])
        pcm = extract_audio(m["mp4"], RATE, "mono") / 32768.0
        contact = meta["contact_frame"]
        heard[colour] = min(PITCHES, key=lambda c: abs(PITCHES[c] - pitch(pcm[0])))
        assert abs(click_at(pcm[0]) - window_samples(contact, 1, 1, meta["fps"], RATE)[0]) <= 16  # 1 ms
        frames = decode_window(m["mp4"], 0, meta["num_frames"], 1, (48, 64), seek=False).astype(np.float32)
        ink = np.abs(frames - meta["background"]).max(axis=-1)  # [T, H, W]: the shape's pixels stand out
        axis, to_end = {"left": (2, False), "right": (2, True), "up": (1, False), "down": (1, True)}[meta["direction"]]
        along = ink.sum(axis=3 - axis)  # [T, positions along the motion axis]
        if not to_end:
            along = along[:, ::-1]  # the wall at the end
        centre = (along * np.arange(along.shape[1])).sum(1) / along.sum(1)
        assert int(np.argmax(centre)) == contact  # nearest to the wall at the contact frame ...
        assert along[contact, -1] > 12 and along[contact - 1, -1] < along[contact, -1]  # ... touching it ...
        assert all(np.diff(centre[: contact + 1]) > 0) and all(np.diff(centre[contact:]) < 0)  # ... and back
    assert heard == {c: c for c in COLOURS}


def test_sound_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match=r"^shapes.bounce: "):
        validate_shapes_sound(ShapesConfig(bounce=1.5))
    with pytest.raises(ConfigError, match=r"^data.audio.layout: unknown '5.1'"):
        typed(["data.audio.enabled=true", "data.audio.layout=5.1"])
    with pytest.raises(ConfigError, match=r"^audio_autoencoder.channels: 2 differs from data.audio.layout mono"):
        typed(["data.audio.enabled=true", "data.audio.layout=mono"])
    typed(["data=cached", "data.audio.enabled=true"])  # the cache holds audio latents (test_audio_autoencoders.py)
    with pytest.raises(ConfigError, match=r"^audio_autoencoder.mel.sample_rate: 16000 differs"):
        typed(["data.audio.enabled=true", "data.audio.sample_rate=22050"])


def test_shapes_files_ingest_to_the_same_sound_as_their_shards(tmp_path):
    """`shapes.files`: the clips as real mp4 files with captions and labels beside them; `osl-data kind=videos` with
    sound kept stores for each exactly the track the Shapes shards carry."""
    from opensora_lite.data.ingest import list_folder

    cfg = ShapesConfig(num_clips=3, clips_per_shard=3, seed=2, bounce=1.0, sound=True, files=True, sizes=[[32, 32]])
    shapes = members(write_shapes_shards(tmp_path / "shapes", cfg, progress=False))
    assert sorted(p.name for p in (tmp_path / "shapes" / "clips").iterdir()) == [
        f"clip000000{i}.{ext}" for i in range(3) for ext in ("json", "mp4", "txt")
    ]
    report = write_shards(list_folder(tmp_path / "shapes" / "clips"), tmp_path / "ingested", 8, 1, False, audio=AUDIO)
    for m in members(report.shards).values():
        key = json.loads(m["json"])["source"].rsplit("/", 1)[1].removesuffix(".mp4")
        assert m["mp4"] == shapes[key]["mp4"] and m["txt"] == shapes[key]["txt"]
        assert m["wav"] == shapes[key]["wav"]
        assert json.loads(m["json"])["audio"] == json.loads(shapes[key]["json"])["audio"]
