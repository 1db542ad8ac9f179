"""Measure the peak host memory of real training steps of a small MMDiT on CPU (tests/test_plan.py).

python tests/plan_memory_probe.py ENGINE WORLD AC OUT [distill]: ENGINE single | fsdp2, WORLD processes
(gloo), AC 0 | 1 (every block checkpointed); `distill`: a distill stage's DMD2 steps (teacher and critic
beside the student). Each rank resets its peak resident size (/proc/self/clear_refs)
after start-up, builds the model and optimizer through the engine and runs two steps (the second one
with AdamW state); the largest growth of the peak over the ranks goes to OUT as json (bytes).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from conftest import spawn_ranks

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT, MMDiTConfig

BATCH, FRAMES, SIDE, TXT = 2, 4, 32, 64  # per rank: 4 x 16 x 16 = 1024 video tokens + 64 text tokens
MODEL = MMDiTConfig(
    latent_channels=4,
    patch_size=[1, 2, 2],
    hidden_size=192,
    num_heads=4,
    depth=2,
    depth_single_blocks=4,
    axes_dim=[16, 16, 16],
    context_in_dim=64,
    vec_in_dim=32,
    guidance_embed=False,
)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(engine_kind: str, ac: bool, distill: bool = False) -> int:
    from opensora_lite.parallel import build_engine

    blocks = 100 if ac else 0
    ac = {"double_blocks": blocks, "single_blocks": blocks}
    engine = build_engine(ParallelConfig(engine=engine_kind, ac_blocks=ac), "cpu")
    g = torch.Generator().manual_seed(engine.dp_rank)
    x = torch.randn(BATCH, 4, FRAMES, SIDE, SIDE, generator=g)
    t, txt, y = torch.rand(BATCH, generator=g), torch.randn(BATCH, TXT, 64, generator=g), torch.randn(BATCH, 32)
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    torch.manual_seed(0)
    model = MMDiT(MODEL)
    if distill:  # a distill stage's step (train/tasks/distill.py): the frozen teacher and the critic beside it
        return _distill_peak(engine, model, x, t, txt, y, base)
    model, opt = engine.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-4), 1.0, FLUX.blocks(model))
    for _ in range(2):
        loss = (model(x, t, txt, y).float() - x).pow(2).mean()
        engine.backward(model, loss)
        engine.step(model, opt)
    peak = _status("VmHWM") - base
    engine.shutdown()
    return peak


def _distill_peak(engine, model, x, t, txt, y, base: int) -> int:
    """Two DMD2 steps: the student's prediction and distribution-matching loss (the teacher guided by text
    CFG, two branches), its backward and step, then one critic update on its samples."""
    import copy

    from opensora_lite.diffusion.distill import critic_loss, dmd_loss, predict_x0
    from opensora_lite.diffusion.guidance import Guidance
    from opensora_lite.train.tasks.companion import Companion

    teacher = copy.deepcopy(model).requires_grad_(False)
    teacher = engine.shard_companion(teacher, FLUX.blocks(teacher))
    critic = copy.deepcopy(model)
    critic = Companion("critic", engine.shard_companion(critic, FLUX.blocks(critic)), 1e-4, (0.0, 0.99), 1e-8, 1.0)
    model, opt = engine.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-4), 1.0, FLUX.blocks(model))
    velocity = lambda m: lambda x, t, t5, clip, cond=None: FLUX.forward(m, x, t, t5, clip, cond)  # noqa: E731
    empty = (torch.zeros(1, *txt.shape[1:]), torch.zeros(1, *y.shape[1:]))
    for _ in range(2):
        x0_hat = predict_x0(x, FLUX.forward(model, x, t, txt, y, None), t, 1e-5)
        loss, _ = dmd_loss(x0_hat, velocity(teacher), velocity(critic.module), txt, y, empty, Guidance(4.0), None,
                           t, torch.randn_like(x), 1e-5)  # fmt: skip
        engine.backward(model, loss)
        engine.step(model, opt)
        critic_loss(velocity(critic.module), x0_hat.detach(), txt, y, None, t, torch.randn_like(x), 1e-5).backward()
        critic.step(engine.world_size)
    peak = _status("VmHWM") - base
    engine.shutdown()
    return peak


def _rank(rank: int, port: int, world: int, engine_kind: str, ac: bool, out: str, distill: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    Path(f"{out}.{rank}").write_text(json.dumps(measure(engine_kind, ac, distill)))


def main() -> None:
    engine_kind, world, ac, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    distill = len(sys.argv) > 5 and sys.argv[5] == "distill"
    torch.set_num_threads(1)
    if world == 1:
        peaks = [measure(engine_kind, ac, distill)]
    else:
        spawn_ranks(_rank, (world, engine_kind, ac, out, distill), nprocs=world)
        peaks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    Path(out).write_text(json.dumps(max(peaks)))


if __name__ == "__main__":
    main()
