"""Rectified-flow math against values computed by hand."""

import math

import pytest
import torch

from opensora_lite.diffusion import flow
from opensora_lite.diffusion.conditioning import build_condition, given_frames, sample_tasks
from opensora_lite.diffusion.objective import drop_text

CFG = flow.FlowConfig()  # Open-Sora 2.0's constants: 256 tokens -> 1, 4096 tokens -> 3, sqrt(frames)


@pytest.mark.parametrize(
    "tokens,frames,expected",
    [
        (256, 1, 1.0),  # the base point of the line
        (4096, 1, 3.0),  # the max point
        (2176, 1, 2.0),  # halfway between them
        (256, 4, 2.0),  # sqrt(4) temporal factor
        (64, 5, (1 + (64 - 256) * 2 / 3840) * math.sqrt(5)),  # the tiny curriculum's bucket: 0.9 * 2.236
        (1024, 33, (1 + 768 * 2 / 3840) * math.sqrt(33)),  # 256px x 129 frames with the Hunyuan VAE
    ],
)
def test_shift_alpha_known_values(tokens, frames, expected):
    assert flow.shift_alpha(CFG, tokens, frames) == pytest.approx(expected, rel=1e-12)


def test_shift_can_be_disabled_and_rejects_nonpositive():
    assert flow.shift_alpha(flow.FlowConfig(shift=False), 4096, 33) == 1.0
    with pytest.raises(ValueError, match="time shift"):
        flow.shift_alpha(flow.FlowConfig(base_shift=0.1, max_shift=3.0), 1, 1)  # 0.1 - 2.9 * 255 / 3840 < 0


def test_time_shift_values():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(flow.time_shift(3.0, t), torch.tensor([0.0, 0.5, 0.75, 1.0]))
    assert torch.allclose(flow.time_shift(1.0, t), t)


def test_noising_endpoints_and_velocity_is_the_path_derivative():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    assert torch.allclose(flow.add_noise(x0, eps, torch.zeros(2), 0.0), x0)
    assert torch.allclose(flow.add_noise(x0, eps, torch.ones(2), 0.0), eps)
    smin = 1e-3  # at t=0 some noise floor is left; at t=1 pure noise
    assert torch.allclose(flow.add_noise(x0, eps, torch.ones(2), smin), eps)
    h = 1e-3
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    x0d, epsd = x0.double(), eps.double()
    deriv = (flow.add_noise(x0d, epsd, t + h, smin) - flow.add_noise(x0d, epsd, t - h, smin)) / (2 * h)
    assert torch.allclose(deriv, flow.velocity_target(x0d, epsd, smin), atol=1e-9)


def test_euler_with_true_velocity_recovers_data_on_any_schedule():
    x0, eps = torch.randn(3, 5), torch.randn(3, 5)
    v = flow.velocity_target(x0, eps, 0.0)
    x = eps
    times = flow.sampling_schedule(CFG, 7, 1024, 9).tolist()
    for t, t_next in zip(times[:-1], times[1:]):
        x = flow.euler_step(x, v, t, t_next)
    assert torch.allclose(x, x0, atol=1e-5)


def test_schedule_runs_from_noise_to_data_and_is_shifted_towards_noise():
    times = flow.sampling_schedule(CFG, 10, 1024, 9)
    assert times[0] == 1 and times[-1] == 0 and bool((times[1:] < times[:-1]).all())
    assert times[5] > 0.5  # alpha > 1 spends more steps at high noise


def test_timestep_distribution_is_logit_normal_then_shifted():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_timesteps(flow.FlowConfig(shift=False), 20000, 256, 1, g)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(t.median()) == pytest.approx(0.5, abs=0.02)
    logit = torch.log(t / (1 - t))
    assert float(logit.std()) == pytest.approx(1.0, abs=0.03)
    shifted = flow.sample_timesteps(CFG, 20000, 256, 4, torch.Generator().manual_seed(0))  # alpha = 2
    assert float(shifted.median()) == pytest.approx(2 * 0.5 / (1 + 0.5), abs=0.02)


def test_i2v_condition_masks_the_right_frames():
    head = torch.full((4, 2, 1, 3, 3), 1.0)
    tail = torch.full((4, 2, 1, 3, 3), 2.0)
    cond = build_condition(["t2v", "i2v_head", "i2v_tail", "i2v_loop"], head, tail, 5)
    mask, masked = cond[:, :1], cond[:, 1:]
    assert cond.shape == (4, 3, 5, 3, 3)
    assert mask[0].sum() == 0 and masked[0].abs().sum() == 0
    assert mask[1, 0, :, 0, 0].tolist() == [1, 0, 0, 0, 0] and masked[1, :, 0].eq(1).all()
    assert mask[2, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 1] and masked[2, :, 4].eq(2).all()
    assert mask[3, 0, :, 0, 0].tolist() == [1, 0, 0, 0, 1]
    assert given_frames("i2v_loop", 1) == []  # an image has nothing to condition on


def test_task_sampling_follows_weights():
    g = torch.Generator().manual_seed(0)
    tasks = sample_tasks({"t2v": 1.0, "i2v_head": 5.0, "i2v_tail": 0.0}, 6000, g)
    assert "i2v_tail" not in tasks
    assert tasks.count("i2v_head") / len(tasks) == pytest.approx(5 / 6, abs=0.02)


def test_text_dropout_is_independent_per_encoder():
    g = torch.Generator().manual_seed(0)
    n = 4000
    t5, clip = torch.ones(n, 2, 3), torch.ones(n, 3)
    empty = (torch.zeros(1, 2, 3), torch.zeros(1, 3))
    t5d, clipd = drop_text(t5, clip, empty, {"t5": 0.3, "clip": 0.3}, g)
    dt5, dclip = t5d[:, 0, 0] == 0, clipd[:, 0] == 0
    assert float(dt5.float().mean()) == pytest.approx(0.3, abs=0.03)
    assert float((dt5 & dclip).float().mean()) == pytest.approx(0.09, abs=0.02)  # independent: 0.3 * 0.3


def test_flow_noise_comes_from_the_device_stream_and_cpu_draws_are_unchanged():
    """flow_loss draws its noise from `noise_generator` on that generator's device (a CUDA generator: on
    the GPU, no host copy). On a CPU the trainer passes the host stream itself (train/generators.py), and
    the loss is bitwise what one generator gave: the times and the noise in the same order."""
    from opensora_lite.diffusion.objective import flow_loss
    from opensora_lite.train.generators import StageGenerators

    x0, t5, clip = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 5, 8), torch.randn(2, 8)
    seen = []

    def model(xt, t, t5, clip, cond=None):
        seen.append((xt, t))
        return xt * 0.5

    def loss(*gens):
        return flow_loss(model, x0, t5, clip, None, CFG, [1, 2, 2], *gens)

    plain = loss(torch.Generator().manual_seed(3))
    gens = StageGenerators(torch.device("cpu"), 3)
    assert gens.device is gens.host and not gens.separate
    assert torch.equal(loss(gens.host, None, gens.device), plain)
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])
    two = StageGenerators(torch.device("cpu"), 3, separate=True)  # as on a GPU: a stream of its own
    loss(two.host, None, two.device)
    assert torch.equal(seen[2][1], seen[0][1]) and not torch.equal(seen[2][0], seen[0][0])  # same times


class _OneRank:
    world_size, rank = 1, 0

    @staticmethod
    def all_gather_object(obj):
        return [obj]


def test_device_noise_stream_is_checkpointed_and_restored():
    """Where the noise stream is separate (a GPU), a checkpoint holds it beside the host stream and a resume
    continues both; a checkpoint written without it (a CPU run) starts a new device stream reproducibly."""
    from opensora_lite.train.generators import StageGenerators

    gens = StageGenerators(torch.device("cpu"), 5, separate=True)
    torch.rand(3, generator=gens.host), torch.randn(4, generator=gens.device)
    state = gens.checkpoint_state(_OneRank)
    assert set(state) == {"generators", "device_generators"}
    expected = torch.rand(3, generator=gens.host), torch.randn(4, generator=gens.device)
    resumed = StageGenerators(torch.device("cpu"), 99, separate=True)
    resumed.restore(state, _OneRank, "t2v", reseed=7)
    got = torch.rand(3, generator=resumed.host), torch.randn(4, generator=resumed.device)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    cpu_written = StageGenerators(torch.device("cpu"), 5).checkpoint_state(_OneRank)
    assert set(cpu_written) == {"generators"}  # what CPU checkpoints always held
    a, b = (StageGenerators(torch.device("cpu"), 1, separate=True) for _ in range(2))
    a.restore(cpu_written, _OneRank, "t2v", reseed=7), b.restore(cpu_written, _OneRank, "t2v", reseed=7)
    assert torch.equal(torch.randn(4, generator=a.device), torch.randn(4, generator=b.device))
