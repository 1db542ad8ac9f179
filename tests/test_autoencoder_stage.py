"""An autoencoder stage (stage.kind=autoencoder): the tiny DC-AE trained on Shapes with L1, a VGG-style
perceptual loss and the 3D PatchGAN. Its losses against hand-computed values; a job killed with SIGKILL
at a random step resumes to bitwise the uninterrupted job's losses (discriminator's included) and final
weights (one process, as tests/test_resume.py does for diffusion stages); 2 gloo ranks under fsdp2 and
ddp follow the single process's trajectory (the tolerance of tests/test_engines.py: 1e-5 relative).
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch
from conftest import two_ranks, typed
from safetensors.torch import save_file
from test_resume import SEED, _after_resume, _finish, _losses, _records, _start, _wait_for

from opensora_lite.autoencoders.losses import (
    PatchDiscriminator3D,
    VGGPerceptual,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
)
from opensora_lite.checkpoint.files import load_weights
from opensora_lite.checkpoint.stage import StageCheckpoints as StageDir
from opensora_lite.errors import ConfigError
from opensora_lite.eval.reconstruction import psnr, ssim

STEPS, DISC_START = 6, 2


def tiny_vgg(path: Path) -> Path:
    """A VGG-like file in torchvision's names: conv 0, conv 2 (ReLU, then a pool: gap 3), conv 5; LPIPS lins."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for idx, (cin, cout) in {0: (3, 4), 2: (4, 4), 5: (4, 8)}.items():
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.3
        state[f"features.{idx}.bias"] = torch.zeros(cout)
    state["lin0.model.1.weight"] = torch.rand(1, 4, 1, 1, generator=g)
    state["lin1.model.1.weight"] = torch.rand(1, 8, 1, 1, generator=g)
    save_file(state, str(path))
    return path


def test_losses_and_scores_against_hand_computed_values(tmp_path):
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * ((0 + 0.5 + 2) / 3 + (0 + 1 + 2) / 3))
    assert float(hinge_g_loss(fake)) == pytest.approx(1 / 3)
    from safetensors.torch import load_file

    vgg = VGGPerceptual(load_file(tiny_vgg(tmp_path / "vgg.safetensors")))
    assert vgg.taps == [1, 2] and vgg.pool_after == {1}  # read from the indices: a pool after conv 2
    video = torch.rand(2, 3, 2, 16, 16) * 2 - 1
    assert float(vgg(video, video)) == 0.0 and float(vgg(video.flip(-1), video)) > 0
    assert psnr(video, video) == 100.0 and ssim(video, video) == pytest.approx(1.0, abs=1e-6)
    assert psnr((video + 0.2).clamp(-1, 1), video) < psnr((video + 0.02).clamp(-1, 1), video)
    # the adaptive weight: the ratio of the two losses' gradient norms at the reconstruction
    recon = video.clone().requires_grad_(True)

    def nll_fn(x):
        return (x - video).abs().mean() + x.pow(2).mean()

    gn = torch.autograd.grad(nll_fn(recon), recon)[0].norm()
    assert float(adaptive_weight(nll_fn, lambda x: -(3 * x).mean(), recon, 0.5)) == pytest.approx(
        0.5 * float(gn) / (3 / recon.numel() ** 0.5 + 1e-4)
    )
    logits = PatchDiscriminator3D(8, 2)(video[:, :, :1])  # a single image passes (time keeps its length)
    assert logits.shape[:3] == (2, 1, 1)


def _ae(*extra: str) -> list[str]:
    return ["experiment=tiny_autoencoder", *extra]


@pytest.mark.parametrize(
    "override, key",
    [
        (
            ("curriculum.stages.ae.reconstruction.perceptual_weight=0.1",),
            "curriculum.stages.ae.reconstruction.vgg_path",
        ),
        (("autoencoder=pixel", "model.latent_channels=12"), "autoencoder.kind"),
        (("parallel=deepspeed_zero2",), "parallel.engine"),
        (("curriculum.stages.ae.kind=vae",), "curriculum.stages.ae.kind"),
    ],
)
def test_an_autoencoder_stage_that_cannot_run_is_one_config_error(override, key):
    with pytest.raises(ConfigError) as info:
        typed(_ae(*override))
    assert info.value.key == key


def _overrides(data: Path, root: Path, vgg: Path) -> list[str]:
    s = "curriculum.stages.ae"
    return _ae(
        f"data.shards={data}",
        "data.aspect_ratios=[0.75,1.0,1.3333]",
        "data.num_workers=0",
        f"run.root={root}",
        "run.name=job",
        "logger.progress_bar=false",
        "eval.val_batches=1",
        f"{s}.steps={STEPS}",
        f"{s}.log_every=1",
        f"{s}.checkpoint_every=1",
        f"{s}.buckets={{16px:{{8:[1.0,2]}}}}",
        f"{s}.reconstruction.disc_start={DISC_START}",
        f"{s}.reconstruction.perceptual_weight=0.1",
        f"{s}.reconstruction.vgg_path={vgg}",
        f"{s}.reconstruction.image_fraction=0.3",
    )


def test_a_killed_autoencoder_stage_resumes_bitwise(shapes_dir, tmp_path):
    vgg = tiny_vgg(tmp_path / "vgg.safetensors")
    ref_root = tmp_path / "reference"
    _finish(_overrides(shapes_dir, ref_root, vgg), tmp_path / "reference.log")
    ref = {r["step"]: r for r in _records(ref_root / "job") if "loss" in r}
    assert sorted(ref) == list(range(1, STEPS + 1))
    assert "d_loss" not in ref[DISC_START] and "d_loss" in ref[DISC_START + 1]  # (0-based step DISC_START)
    assert all("perceptual" in r for r in ref.values())
    final = ref_root / "job" / "ae"
    summary = json.loads((final / "final" / "summary.json").read_text())
    assert 0 < summary["metrics"]["psnr"] < 100 and -1 < summary["metrics"]["ssim"] < 1
    assert (final / "samples" / "reconstruction.png").is_file()
    assert (final / "final" / "ema.safetensors").is_file()

    kill_after = random.Random(SEED).randint(2, STEPS - 2)
    context = f"seed {SEED}, killed after step {kill_after} was logged"
    overrides, run_dir, log = _overrides(shapes_dir, tmp_path, vgg), tmp_path / "job", tmp_path / "job.log"
    proc = _start(overrides, log)
    _wait_for(lambda: len(_losses(_records(run_dir))) >= kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    newest = StageDir(run_dir / "ae").latest_checkpoint()
    assert newest is not None, context
    _finish(overrides, log)
    rerun = [r for r in _after_resume(_records(run_dir)) if "loss" in r]
    assert rerun[0]["step"] == int(newest.name.split("_")[1]) + 1, context
    for r in rerun:
        for k in ("loss", "l1", "perceptual", "d_loss", "g_loss", "d_weight"):
            assert r.get(k) == ref[r["step"]].get(k), f"step {r['step']} {k} differs ({context})"
    want, got = (load_weights(d / "ae" / "final" / "model.safetensors") for d in (ref_root / "job", run_dir))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), context


# -- several processes against one --------------------------------------------------------------
# (no perceptual term here: its unit-normalised features of a tiny random VGG have near-zero norms, whose
# gradients amplify fp32 reduction-order differences beyond 1e-5; it is per frame, so no engine changes it)
BATCH, TRAIN_STEPS = 4, 4


def _train(kind: str) -> list[list[float]]:
    """TRAIN_STEPS steps of the autoencoder task on this rank's slice of fixed global batches;
    per step the global loss and the discriminator's loss."""
    from opensora_lite.parallel import build_engine
    from opensora_lite.train.tasks.autoencoder import AutoencoderTask

    s = "curriculum.stages.ae.reconstruction"
    cfg = typed(
        _ae(
            f"parallel={kind}",
            f"{s}.disc_start=1",
            f"{s}.image_fraction=0.3",
        )
    )
    engine = build_engine(cfg.parallel, "cpu")
    from types import SimpleNamespace

    from opensora_lite.train.tasks import StageContext

    task = AutoencoderTask(StageContext(SimpleNamespace(cfg=cfg, engine=engine), "ae", 0, 0, cfg))
    model, opt = engine.prepare(task.build_model(), lambda p: torch.optim.AdamW(p, lr=1e-3), 1.0)
    per, out = BATCH // engine.dp_size, []
    for step in range(TRAIN_STEPS):
        g = torch.Generator().manual_seed(10)  # one batch, learnt over the steps
        video = torch.rand(BATCH, 3, 8, 16, 16, generator=g) * 2 - 1
        mine = {"video": video[engine.dp_rank * per : (engine.dp_rank + 1) * per]}
        loss, _, _ = task.micro_step(model, mine, None, step, last=True)
        engine.step(model, opt)
        task.after_step(step)
        parts = task.take_metrics()
        out.append(
            [engine.all_reduce_mean(float(loss)), parts["l1"], parts.get("d_loss", 0.0), parts.get("d_weight", 0.0)]
        )
    engine.shutdown()
    return out


@pytest.fixture(scope="module")
def single_reference():
    return _train("single")


@pytest.mark.usefixtures("single_process_env")
@pytest.mark.parametrize("kind", ["fsdp2", "ddp"])
def test_two_ranks_follow_the_single_process(kind, single_reference, tmp_path):
    ref = single_reference
    assert ref[-1][1] < ref[0][1] and ref[-1][2] > 0  # it trains (L1 falls), the discriminator with it
    run = two_ranks(_train, tmp_path, kind)
    for step, (a, b) in enumerate(zip(run, ref)):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}: {a} vs {b}"
