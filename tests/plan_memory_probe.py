"""Measure the peak host memory of real training steps of a small MMDiT on CPU (tests/test_plan.py).

python tests/plan_memory_probe.py ENGINE WORLD AC OUT: ENGINE single | fsdp2, WORLD processes (gloo),
AC 0 | 1 (every block checkpointed). Each rank resets its peak resident size (/proc/self/clear_refs)
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


def measure(engine_kind: str, ac: bool) -> int:
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
    model, opt = engine.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-4), 1.0, FLUX.blocks(model))
    for _ in range(2):
        loss = (model(x, t, txt, y).float() - x).pow(2).mean()
        engine.backward(model, loss)
        engine.step(model, opt)
    peak = _status("VmHWM") - base
    engine.shutdown()
    return peak


def _rank(rank: int, port: int, world: int, engine_kind: str, ac: bool, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    Path(f"{out}.{rank}").write_text(json.dumps(measure(engine_kind, ac)))


def main() -> None:
    engine_kind, world, ac, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
    torch.set_num_threads(1)
    if world == 1:
        peaks = [measure(engine_kind, ac)]
    else:
        spawn_ranks(_rank, (world, engine_kind, ac, out), nprocs=world)
        peaks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
    Path(out).write_text(json.dumps(max(peaks)))


if __name__ == "__main__":
    main()
