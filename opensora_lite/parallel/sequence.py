"""Ulysses sequence parallelism for joint text + video attention, independent of the engine.

The ranks of a sequence-parallel (SP) group train on the same samples. Each holds 1/sp of the video
tokens (padded to a multiple of sp; padded keys are masked out of attention) and all text tokens.
Around each attention, an all-to-all trades the sequence split for a head split: every rank then
attends over the whole joint sequence for H/sp heads (its heads of the replicated text tokens need no
communication), and a second all-to-all trades back. The text outputs are gathered over heads, since
every rank carries the text stream. At the end the video tokens are gathered.

The audio stream's attentions (models/flux/audio.py) go through `segment_attention`, the same trade
for sequences made of several segments: audio and video tokens split like the video above, text
replicated.

Gradients: each rank's parameter gradients cover its own tokens; their sum over the SP group is the
gradient of the whole sample. Data-parallel engines average over all ranks, so the training loss is
multiplied by sp (see `loss_scale`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from opensora_lite.models.attention import run_kernel


class SPContext:
    def __init__(self, group: dist.ProcessGroup | None, size: int, rank: int):
        self.group, self.size, self.rank = group, size, rank

    @property
    def loss_scale(self) -> float:
        return float(self.size)

    # -- video tokens: split before the blocks, gathered after -----------------------------------
    def padded_length(self, n: int) -> int:
        return -(-n // self.size) * self.size

    def split(self, x: Tensor, dim: int = 1) -> Tensor:
        """This rank's slice of a full token sequence (zero-padded to a multiple of sp)."""
        n = x.shape[dim]
        pad = self.padded_length(n) - n
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat((x, x.new_zeros(shape)), dim=dim)
        return x.chunk(self.size, dim=dim)[self.rank]

    def gather(self, x: Tensor, n: int, dim: int = 1) -> Tensor:
        """The full sequence from every rank's slice, padding dropped. Every rank then holds the same
        tensor and computes the same loss, so backward passes each rank its own slice's gradient."""
        return _GatherSeq.apply(x, self, dim).narrow(dim, 0, n)

    # -- attention ---------------------------------------------------------------------------------
    def attention(self, q: Tensor, k: Tensor, v: Tensor, txt_len: int, valid_img: int, kernel: str) -> Tensor:
        """q, k, v [B, H, txt_len + local video tokens, D] -> the same layout, attending over everything
        with `kernel` (resolved by the AttentionCore)."""
        heads = q.shape[1]
        per = heads // self.size
        h0 = self.rank * per

        def to_heads(t: Tensor) -> Tensor:  # [B, H, txt + Li/sp, D] -> [B, H/sp, txt + Li, D]
            img = _AllToAll.apply(t[:, :, txt_len:], self, 1, 2)  # scatter heads, gather tokens
            return torch.cat((t[:, h0 : h0 + per, :txt_len], img), dim=2)

        qh, kh, vh = to_heads(q), to_heads(k), to_heads(v)
        total = kh.shape[2]
        mask = None
        if txt_len + valid_img < total:  # padded video tokens must not be attended to
            mask = torch.zeros(total, dtype=torch.bool, device=q.device)
            mask[: txt_len + valid_img] = True
        out = run_kernel(kernel, qh, kh, vh, mask=mask)  # [B, H/sp, txt + Li, D]
        txt_out = _GatherHeads.apply(out[:, :, :txt_len], self)  # [B, H, txt, D]
        img_out = _AllToAll.apply(out[:, :, txt_len:], self, 2, 1)  # scatter tokens, gather heads
        return torch.cat((txt_out, img_out), dim=2)

    def segment_attention(self, q: Tensor, k: Tensor, v: Tensor, q_segments, kv_segments, kernel: str) -> Tensor:
        """Attention between sequences made of segments (tokens of the whole sequence, split over the
        ranks or replicated), in the layout above: a split segment holds this rank's share (padded),
        a replicated one all its tokens. Split segments trade their sequence split for a head split, a
        replicated one gives this rank's heads; padded keys are masked out. The audio stream's
        attentions: audio queries over [text, audio, video] keys, video queries over audio keys."""
        per = q.shape[1] // self.size
        h0 = self.rank * per

        def local(n: int, split: bool) -> int:
            return self.padded_length(n) // self.size if split else n

        def to_heads(t: Tensor, segments) -> Tensor:
            parts, start = [], 0
            for n, split in segments:
                part = t.narrow(2, start, local(n, split))
                start += local(n, split)
                parts.append(_AllToAll.apply(part, self, 1, 2) if split else part[:, h0 : h0 + per])
            return torch.cat(parts, dim=2)

        qh, kh, vh = to_heads(q, q_segments), to_heads(k, kv_segments), to_heads(v, kv_segments)
        mask = None
        if any(split and self.padded_length(n) > n for n, split in kv_segments):  # (decided on the host: no sync)
            keep = [torch.arange(self.padded_length(n) if split else n) < n for n, split in kv_segments]
            mask = torch.cat(keep).to(q.device)
        out = run_kernel(kernel, qh, kh, vh, mask=mask)
        parts, start = [], 0
        for n, split in q_segments:
            full = self.padded_length(n) if split else n
            part = out.narrow(2, start, full)
            start += full
            parts.append(_AllToAll.apply(part, self, 2, 1) if split else _GatherHeads.apply(part, self))
        return torch.cat(parts, dim=2)


def _all_to_all(x: Tensor, sp: SPContext, scatter_dim: int, gather_dim: int) -> Tensor:
    """Chunk i of x along scatter_dim goes to rank i; what each rank sends is joined along gather_dim."""
    sends = [c.contiguous() for c in x.chunk(sp.size, dim=scatter_dim)]
    receives = [torch.empty_like(sends[0]) for _ in range(sp.size)]  # contiguous, like sends[0]
    dist.all_to_all(receives, sends, group=sp.group)
    return torch.cat(receives, dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sp: SPContext, scatter_dim: int, gather_dim: int) -> Tensor:
        ctx.sp, ctx.dims = sp, (scatter_dim, gather_dim)
        return _all_to_all(x, sp, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        scatter_dim, gather_dim = ctx.dims
        return _all_to_all(grad, ctx.sp, gather_dim, scatter_dim), None, None, None


class _GatherHeads(torch.autograd.Function):
    """Every rank's heads of the (replicated) text tokens, joined. Backward: each rank's upstream
    gradient covers only its own tokens' influence, so the full gradient of a head slice is the sum
    over ranks."""

    @staticmethod
    def forward(ctx, x: Tensor, sp: SPContext) -> Tensor:
        ctx.sp = sp
        parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(sp.size)]
        dist.all_gather(parts, x.contiguous(), group=sp.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.sp.group)
        return grad.chunk(ctx.sp.size, dim=1)[ctx.sp.rank].contiguous(), None


class _GatherSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sp: SPContext, dim: int) -> Tensor:
        ctx.sp, ctx.dim = sp, dim
        parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(sp.size)]
        dist.all_gather(parts, x.contiguous(), group=sp.group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.chunk(ctx.sp.size, dim=ctx.dim)[ctx.sp.rank].contiguous(), None, None
