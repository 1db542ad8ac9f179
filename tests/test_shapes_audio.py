"""The Shapes sound evaluator (eval/shapes_audio.py) pinned on real rendered clips with sound: every
colour, bouncing and not, written as mp4 (H.264 + AAC) and decoded back with PyAV; and the contact
sheet's spectrogram row on the frames' time line."""

from __future__ import annotations

import numpy as np
import pytest

from opensora_lite.config.schema import MelConfig, ShapesConfig
from opensora_lite.data.audio import extract_audio
from opensora_lite.data.synthetic import COLOURS, render_clip, shapes_media
from opensora_lite.data.video import decode_window
from opensora_lite.eval import shapes_audio

RATE = 16000


@pytest.fixture(scope="module")
def real_clips():
    """One straight and one bouncing clip of each colour (the data generator's own draws, default sizes
    and frame rates), through real mp4 files: [(frames, waveform, meta)]."""
    clips = []
    for n, colour in enumerate(COLOURS):
        cfg = ShapesConfig(colours=[colour], bounce=0.5, sound=True)
        rng, kinds = np.random.default_rng(n), {}
        while len(kinds) < 2:
            frames, meta = render_clip(rng, cfg)
            if meta["motion"] not in kinds:
                kinds[meta["motion"]] = (shapes_media(frames, meta, cfg)["mp4"], meta)
        for motion in ("straight", "bounce"):
            mp4, meta = kinds[motion]
            size = (meta["height"], meta["width"])
            video = decode_window(mp4, 0, meta["num_frames"], 1, size, seek=False)
            clips.append((video, extract_audio(mp4, RATE, "stereo", meta["num_frames"]) / 32768.0, meta))
    return clips


def _score(clips, waves=None):
    videos = [c[0] for c in clips]
    waves = [c[1] for c in clips] if waves is None else waves
    targets = [{"colour": m["colour"], "bounce": m["motion"] == "bounce"} for _, _, m in clips]
    return shapes_audio.score_sound(videos, waves, RATE, [m["fps"] for _, _, m in clips], targets)


def test_real_clips_read_their_colour_their_bounce_and_their_click(real_clips):
    for video, wave, meta in real_clips:
        sound, bounce = shapes_audio.read_sound(wave, RATE), shapes_audio.read_bounce(video)
        assert sound.colour == meta["colour"]
        if meta["motion"] == "bounce":
            assert bounce.frame == meta["contact_frame"] and bounce.gap_px <= 1.0
            assert abs(sound.onset_s - meta["contact_frame"] / meta["fps"]) < 0.002  # within 2 ms
        else:
            assert bounce.frame is None and sound.onset_s is None  # no reversal seen, no click heard
    scores = _score(real_clips)
    assert scores["audio_pitch_acc"] == 1.0 and scores["audio_bounce_rate"] == 1.0
    assert scores["audio_click_rate"] == 1.0 and scores["audio_click_rate_straight"] == 0.0
    assert scores["audio_sync_within_frame"] == 1.0
    assert scores["audio_sync_error_ms"] < 2.0 and scores["audio_wall_gap_px"] <= 1.0
    assert scores["audio_sync_error_median_ms"] < 2.0 and scores["audio_sync_error_shuffled_median_ms"] > 50
    # the baseline: each bounce's video against another bounce's click, far outside a frame
    assert scores["audio_sync_error_shuffled_ms"] > 20 * scores["audio_sync_error_ms"] + 50


def test_sound_that_ignores_the_pictures_fails_the_checks(real_clips):
    """Each clip's video with the sound of the clip two places on (another colour; a bounce gets
    another bounce's click): the pitch and the sync checks fail, as they do for a model whose sound does
    not follow what is seen. Silence names no colour and has no click."""
    waves = [c[1] for c in real_clips]
    scores = _score(real_clips, waves[2:] + waves[:2])
    assert scores["audio_pitch_acc"] == 0.0
    assert scores["audio_sync_within_frame"] < 0.5 and scores["audio_sync_error_ms"] > 50
    silent = shapes_audio.read_sound(np.zeros((2, RATE)), RATE)
    assert silent.colour == "none" and silent.onset_s is None


def test_the_spectrogram_row_puts_the_click_under_the_contact_frame(real_clips):
    import torch

    from opensora_lite.autoencoders.mel import LogMel
    from opensora_lite.eval.contact_sheet import contact_sheet

    video, wave, meta = next(c for c in real_clips if c[2]["motion"] == "bounce")
    mel = LogMel(MelConfig())(torch.from_numpy(wave).float()[None])[0].numpy()  # [2, frames, 64]
    sheet, lay = contact_sheet([video, video], ["with sound", "again"], scale=2, spectrograms=[mel, mel])
    top, left, h, w = lay.spectrogram(1)
    assert h > 0 and w == lay.frames * (lay.frame_w + lay.gap) - lay.gap and top + h <= sheet.shape[0]
    strip = sheet[top : top + h // 3, left : left + w].astype(np.float32).sum(axis=(0, 2))  # the high mels
    at = float(np.argmax(strip)) / (lay.frame_w + lay.gap)  # in frames
    assert abs(at - meta["contact_frame"]) <= 0.5
    assert (sheet[top + h : top + h + lay.gap] == sheet[0, 0]).all()  # the row ends at its strip


def test_sampled_sound_lasts_the_clip_and_a_tone_ends_without_a_click():
    """diffusion/pipeline.py `decode_sound`: a window of n samples has n // hop + 1 log-mel frames, and
    Griffin-Lim of them at its own length gives (frames - 1) x hop samples, 80 short of a 10000-sample
    clip; padded with silence, a tone stopped dead there and the evaluator heard a click at 620 ms in
    every clip with a tone. Asked for the clip's length, the tone runs to the end and no click is heard."""
    import math

    import torch

    from opensora_lite.autoencoders.audio import GriffinLimVocoder
    from opensora_lite.autoencoders.mel import LogMel
    from opensora_lite.config.schema import AudioAutoencoderConfig
    from opensora_lite.data.synthetic import PITCHES
    from opensora_lite.diffusion.pipeline import decode_sound

    class LogMelAsLatents:  # an "autoencoder" whose latents are the log-mel itself
        mel = LogMel(MelConfig())
        silence = math.log(1e-5)

        def decode(self, latents, mel_frames):
            assert latents.shape[2] == mel_frames
            return latents

    t = torch.arange(32000) / RATE
    track = (0.25 * torch.sin(2 * math.pi * PITCHES["blue"] * t))[None, None].repeat(1, 2, 1)
    ae, vocoder = LogMelAsLatents(), GriffinLimVocoder(AudioAutoencoderConfig())
    logmel = ae.mel(track[..., 8000 - 512 : 18000 + 512], context=512)  # a window cut from the tone's middle
    wave, mel = decode_sound(ae, vocoder, logmel, 10000)
    assert wave.shape == (1, 2, 10000) and torch.equal(mel, logmel)
    assert float(wave[0, 0, -80:].abs().max()) > 0.05  # the tone runs to the end
    sound = shapes_audio.read_sound(wave[0].numpy(), RATE)
    assert sound.colour == "blue" and sound.onset_s is None
    short = torch.nn.functional.pad(vocoder(logmel), (0, 80))  # the old way: its own length, padded
    assert abs(shapes_audio.click_onset(short[0].numpy(), RATE) - 0.62) < 0.002
