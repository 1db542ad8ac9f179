"""Ulysses sequence parallelism: 2 real gloo processes splitting the video tokens give the outputs and
(summed over the group) the gradients of one process holding them all, with and without padding."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import in_process_group, spawn_ranks, tiny_mmdit

from opensora_lite.models.flux.model import MMDiT
from opensora_lite.parallel.sequence import SPContext

CASES = {  # latent (T, H, W) -> video tokens after 2x2 patches
    "odd_tokens_padded": (3, 6, 2),  # 9 tokens: one padding token on the second rank
    "even_tokens": (2, 4, 6),  # 12 tokens
}


def _model_and_inputs(grid, backend):
    torch.manual_seed(0)
    model = MMDiT(tiny_mmdit(attention_backend=backend, num_heads=4, hidden_size=64, axes_dim=[4, 6, 6]), True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    g = torch.Generator().manual_seed(1)
    t, h, w = grid
    x = torch.randn(2, 4, t, h, w, generator=g)
    cond = torch.randn(2, 5, t, h, w, generator=g)
    inputs = (x, torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g))
    return model, inputs, cond


def _run(model, inputs, cond):
    out = model(*inputs, cond=cond)
    out.pow(2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _rank(rank: int, port: int, grid, backend: str, path: str) -> None:
    def body() -> None:
        model, inputs, cond = _model_and_inputs(grid, backend)
        model.set_sequence_parallel(SPContext(dist.group.WORLD, 2, rank))
        out, grads = _run(model, inputs, cond)
        for g in grads.values():  # each rank's gradients cover its own tokens: their sum is the whole
            dist.all_reduce(g)
        if rank == 0:
            torch.save({"out": out, "grads": grads}, path)

    in_process_group(rank, port, body)


@pytest.mark.parametrize("backend", ["math", "sdpa"])
@pytest.mark.parametrize("case", list(CASES))
def test_sp2_equals_sp1(tmp_path, case, backend):
    grid = CASES[case]
    model, inputs, cond = _model_and_inputs(grid, backend)
    ref_out, ref_grads = _run(model, inputs, cond)
    path = tmp_path / "sp.pt"
    spawn_ranks(_rank, (grid, backend, str(path)))
    got = torch.load(path)
    assert torch.allclose(got["out"], ref_out, atol=1e-5, rtol=1e-5)
    for name, g in ref_grads.items():
        assert torch.allclose(got["grads"][name], g, atol=1e-5, rtol=1e-4), name
    assert any(g.abs().sum() > 0 for g in ref_grads.values())


def test_heads_not_divisible_by_sp_are_rejected():
    model = MMDiT(tiny_mmdit(num_heads=3, hidden_size=48, axes_dim=[4, 6, 6]))
    with pytest.raises(ValueError, match="does not divide the 3 heads"):
        model.set_sequence_parallel(SPContext(None, 2, 0))
