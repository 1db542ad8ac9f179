"""Probe: can a tiny MMDiT learn Shapes colour and motion direction, and how fast?

Trains on clips rendered in memory at the training size (no mp4, no loader) with the framework's own
model, flow and evaluator, so many settings can be compared quickly. Prints accuracy against steps.
Used to choose the tiny curriculum's sizes; see docs/tiny-curriculum.md.

    python3 -m benchmarks.probe_motion --res 16 --frames 5 --hidden 128 --steps 1500
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from opensora_lite.autoencoders.pixel import PixelSpaceToDepth
from opensora_lite.data.synthetic import COLOURS, DIRECTIONS, SHAPES, caption_for, render_frame
from opensora_lite.diffusion import flow
from opensora_lite.eval.shapes import score_t2v
from opensora_lite.models.flux.model import MMDiT, MMDiTConfig

ONLY = ""


def make_clip(rng, res, frames, speeds, fps=8.0, size_range=(0.3, 0.4)):
    colour = list(COLOURS)[rng.integers(6)]
    shape = SHAPES[rng.integers(3)]
    direction = ONLY or list(DIRECTIONS)[rng.integers(4)]
    speed = list(speeds)[rng.integers(len(speeds))]
    r = rng.uniform(*size_range) * res / 2
    dy, dx = DIRECTIONS[direction]
    velocity = speeds[speed] * res
    travel = velocity * (frames - 1) / fps
    start = rng.uniform(r, max(r + 1e-3, res - r - travel))
    across = rng.uniform(r, res - r)
    bg = int(rng.integers(0, 31))
    out = []
    for i in range(frames):
        along = start + velocity * i / fps
        pos = along if (dy > 0 or dx > 0) else res - along
        cy, cx = (pos, across) if dy else (across, pos)
        out.append(render_frame(res, res, shape, COLOURS[colour], cy, cx, r, bg))
    return np.stack(out), dict(colour=colour, shape=shape, direction=direction, speed=speed)


def text_encoders(device):
    """The framework's tiny T5 + CLIP, exactly as the tiny curriculum builds them."""
    from hydra import compose, initialize_config_dir

    from opensora_lite.config.load import config_dir, register, to_config
    from opensora_lite.text.encoders import TextEncoders

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = to_config(compose("config"))
    return TextEncoders(cfg.text_encoder, device).encode, cfg.text_encoder.clip.dim


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--res", type=int, default=16)
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--s2d", type=int, default=2)
    p.add_argument("--patch", type=int, default=1)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--image_steps", type=int, default=0, help="image-only pretraining steps first")
    p.add_argument("--image_batch", type=int, default=64)
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument("--sample_steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--fast", type=float, default=0.45)
    p.add_argument("--slow", type=float, default=0.25)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh_opt", action="store_true", help="new optimizer after image pretraining")
    p.add_argument("--theta", type=float, default=100.0, help="RoPE base (the tiny model's; Flux: 10000)")
    p.add_argument("--shards", default="", help="train on these real shards through the framework's loader")
    p.add_argument("--pool", type=int, default=0, help="train on a fixed pool of this many rendered clips")
    p.add_argument("--tag", default="")
    p.add_argument("--only", default="", help="train and evaluate one direction only (temporal coherence without text)")
    a = p.parse_args()
    global ONLY
    ONLY = a.only
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    speeds = {"slow": a.slow, "fast": a.fast}
    encode, clip_dim = text_encoders(dev)
    ae = PixelSpaceToDepth(a.s2d)
    head_dim = a.hidden // a.heads
    t_ax = head_dim // 4 // 2 * 2
    s_ax = (head_dim - t_ax) // 2
    cfg = MMDiTConfig(
        latent_channels=ae.latent_channels,
        patch_size=[1, a.patch, a.patch],
        hidden_size=a.hidden,
        num_heads=a.heads,
        depth=a.double,
        depth_single_blocks=a.single,
        axes_dim=[t_ax, s_ax, s_ax],
        context_in_dim=64,
        vec_in_dim=clip_dim,
        attention_backend="sdpa",
        theta=a.theta,
    )
    model = MMDiT(cfg).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    empty_t5, empty_clip = encode([""])

    streams = {}
    pool = {}

    def batch(frames, n):
        if a.shards:
            from opensora_lite.data.buckets import BucketTable
            from opensora_lite.data.loader import BucketedVideoStream, expand_shards, frames_on_device

            if frames not in streams:
                table = BucketTable({f"{a.res}px": {frames: [1.0, n]}}, [1.0], a.s2d * a.patch)
                streams[frames] = iter(BucketedVideoStream(expand_shards(a.shards), table, 8.0, seed=a.seed))
            b = next(streams[frames])
            video, captions = frames_on_device(b["video"], dev), b["captions"]
        else:
            if a.pool:
                if frames not in pool:
                    pool[frames] = [make_clip(rng, a.res, frames, speeds) for _ in range(a.pool)]
                picks = rng.integers(0, a.pool, n)
                clips, metas = zip(*(pool[frames][i] for i in picks))
            else:
                clips, metas = zip(*(make_clip(rng, a.res, frames, speeds) for _ in range(n)))
            video = torch.from_numpy(np.stack(clips)).to(dev).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
            captions = [caption_for(m["colour"], m["shape"], m["direction"], m["speed"]) for m in metas]
        t5, clip = encode(captions)
        drop = torch.rand(n, device=dev) < a.dropout
        t5 = torch.where(drop[:, None, None], empty_t5, t5)
        drop = torch.rand(n, device=dev) < a.dropout
        clip = torch.where(drop[:, None], empty_clip, clip)
        return ae.encode(video), t5, clip

    def train_step(frames, n):
        x0, t5, clip = batch(frames, n)
        t = flow.time_shift(a.shift, torch.sigmoid(torch.randn(n, device=dev)))
        noise = torch.randn_like(x0)
        xt = flow.add_noise(x0, noise, t, 1e-5)
        loss = (model(xt, t, t5, clip) - flow.velocity_target(x0, noise, 1e-5)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate():
        model.eval()
        targets = []
        for colour in COLOURS:
            for i, direction in enumerate([a.only] * 4 if a.only else DIRECTIONS):
                targets.append(dict(colour=colour, direction=direction, shape=SHAPES[i % 3], speed="fast"))
        targets = targets * 2
        t5, clip = encode([caption_for(t["colour"], t["shape"], t["direction"], t["speed"]) for t in targets])
        n = len(targets)
        g = torch.Generator(device="cpu").manual_seed(0)
        lat = a.res // a.s2d
        x = torch.randn(n, ae.latent_channels, a.frames, lat, lat, generator=g).to(dev)
        ts = flow.time_shift(a.shift, torch.linspace(1, 0, a.sample_steps + 1)).tolist()
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            tt = torch.full((n,), t_cur, device=dev)
            v_c = model(x, tt, t5, clip)
            v_u = model(x, tt, empty_t5.expand_as(t5), empty_clip.expand_as(clip))
            x = flow.euler_step(x, v_u + a.cfg * (v_c - v_u), t_cur, t_next)
        video = ((ae.decode(x).clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).cpu().numpy()
        model.train()
        return score_t2v(list(video), targets)

    log = dict(vars(a), params=nparams, evals=[])
    start = time.time()
    for _ in range(a.image_steps):
        train_step(1, a.image_batch)
    if a.fresh_opt:
        opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    if a.image_steps:
        log["image_time"] = time.time() - start
        r = evaluate()
        log["evals"].append(dict(step=0, **r))
        print(f"[{a.tag}] after image pretrain {a.image_steps}: {r}", flush=True)
    t0 = time.time()
    eval_time = 0.0
    losses = []
    for step in range(1, a.steps + 1):
        losses.append(train_step(a.frames, a.batch))
        if step % a.eval_every == 0 or step == a.steps:
            el = time.time() - t0 - eval_time
            e0 = time.time()
            r = evaluate()
            eval_time += time.time() - e0
            log["evals"].append(dict(step=step, loss=float(np.mean(losses[-50:])), sec=el, **r))
            print(
                f"[{a.tag}] step {step} loss {np.mean(losses[-50:]):.4f} {el:.0f}s/{el / step:.3f}s/step {r}",
                flush=True,
            )
    print("RESULT", json.dumps(log), flush=True)


if __name__ == "__main__":
    main()
