"""The audio stream under parallelism, real gloo processes against one process: Ulysses sequence
parallelism with the audio tokens split over the ranks beside the video tokens (outputs and summed
gradients; an audio block recomputed in backward, as an engine wraps it), and fsdp2, DeepSpeed ZeRO-2 and
ColossalAI ZeRO-2 on 2 ranks training the joint objective (the loss trajectory within the tolerance of
tests/test_engines.py; under fsdp2 the audio blocks sharded and recomputed in backward, under the ZeRO-2s
their gradients and optimizer state partitioned with the rest)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import in_process_group, spawn_ranks, tiny_mmdit, two_ranks

from opensora_lite.checkpoint.files import clean_key
from opensora_lite.config.schema import ParallelConfig
from opensora_lite.models.flux import SPEC
from opensora_lite.models.flux.audio import AudioStreamConfig
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.parallel.checkpointing import apply_activation_checkpointing
from opensora_lite.parallel.sequence import SPContext

AUDIO = AudioStreamConfig(latent_channels=2, latent_bins=4, latents_per_second=25.0, hidden_size=32, num_heads=4)
STEPS, BATCH = 3, 4


def _sp_model_and_inputs():
    torch.manual_seed(0)
    cfg = tiny_mmdit(attention_backend="math", num_heads=4, hidden_size=64, axes_dim=[4, 6, 6], audio=AUDIO)
    model = MMDiT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 6, 2, generator=g)  # 9 video tokens: one padding token on the second rank
    audio = torch.randn(2, 2, 7, 4, generator=g)  # 7 audio tokens: one padding token too
    inputs = (x, torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g))
    return model, inputs, dict(audio=audio, audio_timesteps=torch.rand(2, generator=g), video_rate=8.0)


def _sp_run(model, inputs, audio):
    video, sound = model(*inputs, **audio)
    (video.pow(2).mean() + sound.pow(2).mean()).backward()
    return video.detach(), sound.detach(), {clean_key(n): p.grad.clone() for n, p in model.named_parameters()}


def _sp_rank(rank: int, port: int, path: str) -> None:
    def body() -> None:
        model, inputs, audio = _sp_model_and_inputs()
        model.set_sequence_parallel(SPContext(dist.group.WORLD, 2, rank))
        apply_activation_checkpointing(SPEC.blocks(model), {"audio_blocks": 1})  # as the engines wrap it
        video, sound, grads = _sp_run(model, inputs, audio)
        for g in grads.values():  # each rank's gradients cover its own tokens: their sum is the whole
            dist.all_reduce(g)
        if rank == 0:
            torch.save({"video": video, "sound": sound, "grads": grads}, path)

    in_process_group(rank, port, body)


def test_ulysses_with_audio_tokens_equals_one_process(tmp_path):
    ref_video, ref_sound, ref_grads = _sp_run(*_sp_model_and_inputs())
    path = tmp_path / "sp.pt"
    spawn_ranks(_sp_rank, (str(path),))
    got = torch.load(path)
    assert torch.allclose(got["video"], ref_video, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got["sound"], ref_sound, atol=1e-5, rtol=1e-5)
    for name, g in ref_grads.items():
        assert torch.allclose(got["grads"][name], g, atol=1e-5, rtol=1e-4), name
    assert ref_grads["audio_blocks.0.a2v_q.weight"].abs().sum() > 0  # the cross-modal path is exercised


def test_audio_heads_not_divisible_by_sp_are_rejected():
    cfg = tiny_mmdit(num_heads=2, audio=AudioStreamConfig(hidden_size=24, num_heads=3, latent_bins=2))
    with pytest.raises(ValueError, match="audio stream's 3 heads"):
        MMDiT(cfg).set_sequence_parallel(SPContext(None, 2, 0))


def _batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x, a = torch.randn(BATCH, 4, 3, 4, 6, generator=g), torch.randn(BATCH, 2, 9, 4, generator=g)
    return x, a, torch.rand(BATCH, generator=g), torch.rand(BATCH, generator=g), torch.randn(BATCH, 5, 16, generator=g)


def _train(kind: str) -> list[float]:
    from opensora_lite.parallel import build_engine

    extra = dict(ac_blocks={"audio_blocks": 1, "single_blocks": 1}) if kind == "fsdp2" else {}
    if kind.startswith("colossalai"):  # ColossalAI's own ZeRO code, its CUDA stream calls shimmed for CPU
        sys.path.insert(0, str(Path(__file__).parent / "colossalai_cpu"))
        import sitecustomize

        sitecustomize.install()
    engine = build_engine(ParallelConfig(engine=kind, **extra), "cpu")
    torch.manual_seed(0)
    model = MMDiT(tiny_mmdit(attention_backend="math", audio=AUDIO))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    make = lambda params: torch.optim.AdamW(params, lr=1e-3)  # noqa: E731
    model, opt = engine.prepare(model, make, 0.5, SPEC.blocks(model))
    per = BATCH // engine.dp_size
    losses = []
    for step in range(STEPS):
        x, a, t, ta, txt = (v[engine.dp_rank * per : (engine.dp_rank + 1) * per] for v in _batch(step))
        video, sound = SPEC.forward_av(model, x, t, a, ta, txt, torch.zeros(per, 8), 8.0)
        loss = (video - x).pow(2).mean() + (sound - a).pow(2).mean()
        engine.backward(model, loss, sync=True)
        engine.step(model, opt)
        losses.append(engine.all_reduce_mean(float(loss.detach())))
    if kind == "fsdp2":
        assert engine.sharded_blocks == 2 + 2 + 2 and engine.recomputed == 2  # audio blocks sharded, one recomputed
    engine.shutdown()
    return losses


@pytest.fixture(scope="module")
def av_reference() -> list[float]:
    """The single-process loss trajectory every engine is held to."""
    return _train("single")


@pytest.mark.usefixtures("single_process_env")
@pytest.mark.parametrize("kind", ["fsdp2", "deepspeed_zero2", "colossalai_zero2"])
def test_two_ranks_train_audio_video_like_one_process(kind, av_reference, tmp_path):
    ref = av_reference
    assert ref[-1] < ref[0]
    assert two_ranks(_train, tmp_path, kind) == pytest.approx(ref, rel=1e-5)
