"""Model family wan: the spec over diffusers' WanTransformer3DModel (build, forward, weights, FLOPs,
LoRA groups, the published sizes) and Wan's text encoder kind (UMT5, padding masked). Tiny sizes."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from opensora_lite.errors import CheckpointError, ConfigError
from opensora_lite.models.spec import spec_for
from opensora_lite.models.wan import SPEC, WanConfig

REPO = Path(__file__).resolve().parents[1]
TINY = WanConfig(latent_channels=4, num_attention_heads=2, attention_head_dim=16, text_dim=24, freq_dim=32, ffn_dim=64,
                 num_layers=2)  # fmt: skip


def model_config(name: str, latent_channels: int = 16, text_dim: int = 4096) -> WanConfig:
    """configs/model/<name>.yaml as the `model` group (its defaults list names the WanConfig schema it
    extends), its interpolations given these values."""
    node = OmegaConf.load(REPO / f"configs/model/{name}.yaml")
    assert list(node.pop("defaults")) == ["wan_schema", "_self_"]
    root = OmegaConf.create(
        {
            "autoencoder": {"latent_channels": latent_channels},
            "text_encoder": {"t5": {"dim": text_dim}},
            "model": OmegaConf.merge(OmegaConf.structured(WanConfig), node),
        }
    )
    return OmegaConf.to_object(root.model)


def reference(cfg: WanConfig, seed: int = 0):
    """diffusers' own model for `cfg`, with its own (non-zero everywhere) initialisation."""
    from diffusers import WanTransformer3DModel

    from opensora_lite.models.wan.model import diffusers_kwargs

    torch.manual_seed(seed)
    return WanTransformer3DModel(**diffusers_kwargs(cfg)).eval()


def inputs(cfg: WanConfig, batch: int = 2, frames: int = 3, size: int = 8, text: int = 5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.latent_channels, frames, size, size, generator=g)
    return x, torch.rand(batch, generator=g), torch.randn(batch, text, cfg.text_dim, generator=g)


def test_spec_is_found_by_family_and_builds_the_same_model_on_cpu_and_meta():
    assert spec_for(TINY) is SPEC and spec_for("wan") is SPEC and SPEC.block_groups == ("blocks",)
    torch.manual_seed(0)
    cpu = SPEC.build(TINY)
    with torch.device("meta"):
        meta = SPEC.build(TINY)
    assert [(n, p.shape) for n, p in cpu.named_parameters()] == [(n, p.shape) for n, p in meta.named_parameters()]
    assert all(p.is_meta for p in meta.parameters()) and not any(p.is_meta for p in cpu.parameters())
    assert len(SPEC.blocks(cpu)["blocks"]) == TINY.num_layers
    # the original Wan recipe: a zero output projection, zero biases, unit norms
    assert cpu.proj_out.weight.abs().sum() == 0 and cpu.blocks[0].attn1.to_q.bias.abs().sum() == 0
    assert torch.equal(cpu.blocks[0].attn1.norm_q.weight, torch.ones(32))
    with pytest.raises(ConfigError, match="model.family: wan has no image condition"):
        SPEC.build(TINY, image_condition=True)


def test_init_is_seeded_and_meta_build_filled_by_initial_tensors_is_bitwise_the_cpu_build():
    torch.manual_seed(3)
    cpu = SPEC.build(TINY)
    after_cpu = torch.rand(1)
    torch.manual_seed(3)
    again = SPEC.build(TINY)
    torch.manual_seed(4)
    other = SPEC.build(TINY)
    assert all(torch.equal(a, b) for a, b in zip(cpu.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(cpu.blocks[0].ffn.net[2].weight, other.blocks[0].ffn.net[2].weight)

    with torch.device("meta"):
        meta = SPEC.build(TINY)
    meta.to_empty(device="cpu")  # as a sharded meta start does: parameters uninitialised, no buffers to fill
    torch.manual_seed(3)
    with torch.no_grad():
        for name, value in SPEC.initial_tensors(meta):
            meta.get_parameter(name).copy_(value)
    assert torch.equal(torch.rand(1), after_cpu)  # the global RNG moves as the CPU build moves it
    assert all(torch.equal(a, b) for a, b in zip(cpu.state_dict().values(), meta.state_dict().values()))
    some = {"blocks.1.attn2.to_k.weight", "scale_shift_table"}
    torch.manual_seed(3)
    assert {n: v.shape for n, v in SPEC.initial_tensors(meta, some)} == {n: cpu.get_parameter(n).shape for n in some}
    # RoPE tables are computed on the CPU, never on meta: the meta-built model runs after to_empty
    reference_weights = reference(TINY).state_dict()
    cpu.load_state_dict(reference_weights)
    meta.load_state_dict(reference_weights)
    x, t, t5 = inputs(TINY)
    with torch.no_grad():
        assert torch.equal(SPEC.forward(cpu, x, t, t5, None), SPEC.forward(meta, x, t, t5, None))


def test_forward_is_diffusers_wan_at_timestep_t_times_1000():
    ref = reference(TINY)
    torch.manual_seed(0)
    ours = SPEC.build(TINY).eval()
    ours.load_state_dict(ref.state_dict())
    x, t, t5 = inputs(TINY)
    with torch.no_grad():
        got = SPEC.forward(ours, x, t, t5, torch.randn(2, 7))  # the CLIP vector is not used
        want = ref(hidden_states=x, timestep=t * 1000, encoder_hidden_states=t5, return_dict=False)[0]
        unscaled = ref(hidden_states=x, timestep=t, encoder_hidden_states=t5, return_dict=False)[0]
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert (got - unscaled).abs().max() > 1e-3  # the timestep scale matters, so the check above can fail
    with pytest.raises(ValueError, match="no I2V condition"):
        SPEC.forward(ours, x, t, t5, None, cond=torch.zeros(2, 5, 3, 8, 8))
    # deepcopy (EMA) keeps the RoPE tables and gives the same output
    with torch.no_grad():
        assert torch.equal(SPEC.forward(copy.deepcopy(ours), x, t, t5, None), got)


def test_bf16_cast_keeps_rope_tables_float32():
    model = SPEC.build(TINY).to(torch.bfloat16)
    assert model.rope.freqs_cos.dtype == torch.float32 and not list(model.buffers())


def _original_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' Wan names -> the original release's (written out here, independently of diffusers)."""
    table = [
        ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
        ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
        ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
        ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
        ("condition_embedder.time_proj", "time_projection.1"),
        ("attn1", "self_attn"),
        ("attn2", "cross_attn"),
        ("to_out.0", "o"),
        ("to_q", "q"),
        ("to_k", "k"),
        ("to_v", "v"),
        ("ffn.net.0.proj", "ffn.0"),
        ("ffn.net.2", "ffn.2"),
        ("norm2", "norm3"),  # the cross-attention norm
        ("proj_out", "head.head"),
    ]
    out = {}
    for key, value in state.items():
        if key == "scale_shift_table":
            key = "head.modulation"
        key = key.replace("scale_shift_table", "modulation")
        for ours, theirs in table:
            key = re.sub(rf"(^|\.){re.escape(ours)}(\.|$)", rf"\g<1>{theirs}\g<2>", key)
        out[key] = value
    return out


def test_read_weights_reads_diffusers_folders_files_dcp_and_original_names(tmp_path):
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    ref = reference(TINY)
    want = ref.state_dict()
    ref.save_pretrained(tmp_path / "single")
    ref.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="20KB")
    assert (tmp_path / "pipe" / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    save_file(want, str(tmp_path / "file.safetensors"))
    save_file(_original_names(want), str(tmp_path / "original.safetensors"))
    dcp.save({k: v.clone() for k, v in want.items()}, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    for path, fmt in [("single", "diffusers"), ("pipe", "diffusers"), ("file.safetensors", "diffusers"),
                      ("original.safetensors", "original"), ("dcp", "dcp")]:  # fmt: skip
        state, found = SPEC.read_weights(tmp_path / path)
        assert found == fmt, path
        assert sorted(state) == sorted(want), path
        assert all(torch.equal(state[k], want[k]) for k in want), path
    # rank-local reads (parallel.meta_init): rows of a parameter, by the model's names
    for path in ("pipe", "original.safetensors"):
        lazy = SPEC.lazy_weights(tmp_path / path)
        assert sorted(lazy.keys()) == sorted(want)
        key = "blocks.1.ffn.net.0.proj.weight"
        assert lazy.shape(key) == tuple(want[key].shape)
        assert torch.equal(lazy.read(key, slice(16, 48)), want[key][16:48])


def test_read_weights_refuses_what_it_cannot_train(tmp_path):
    from safetensors.torch import save_file

    state = reference(TINY).state_dict()
    save_file({**state, "blocks.0.attn2.add_k_proj.weight": torch.zeros(2, 2)}, str(tmp_path / "i2v.safetensors"))
    with pytest.raises(CheckpointError, match="image-to-video Wan checkpoint"):
        SPEC.read_weights(tmp_path / "i2v.safetensors")
    save_file({"img_in.weight": torch.zeros(2, 2)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(CheckpointError, match="not a Wan transformer .* img_in.weight"):
        SPEC.read_weights(tmp_path / "flux.safetensors")
    for expert in ("transformer", "transformer_2"):
        reference(TINY).save_pretrained(tmp_path / "a14b" / expert)
    with pytest.raises(CheckpointError, match="two experts"):
        SPEC.read_weights(tmp_path / "a14b")
    assert SPEC.read_weights(tmp_path / "a14b" / "transformer_2")[1] == "diffusers"
    with pytest.raises(CheckpointError, match="does not exist"):
        SPEC.read_weights(tmp_path / "nothing")


def test_flops_equal_torch_flop_counter_on_a_real_forward_and_backward():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = reference(TINY)  # diffusers' init: every linear non-zero
    x, t, t5 = inputs(TINY, batch=1, frames=3, size=8, text=7)
    video_tokens = 3 * 4 * 4
    with sdpa_kernel(SDPBackend.MATH):  # counted as the matmuls it runs (CPU flash kernels are not counted)
        with FlopCounterMode(display=False) as forward:
            out = SPEC.forward(model, x, t, t5, None)
        with FlopCounterMode(display=False) as backward:
            out.square().mean().backward()
        with FlopCounterMode(display=False) as block:
            hidden = torch.randn(1, video_tokens, TINY.hidden_size)
            temb, rope = torch.randn(1, 6, TINY.hidden_size), model.rope(x)
            model.blocks[0](hidden, torch.randn(1, 7, TINY.hidden_size), temb, rope)
    flops = SPEC.flops(TINY, video_tokens, 7)
    print(f"tiny: forward {flops.forward:.0f} (counted {forward.get_total_flops()}), backward {flops.backward:.0f} "
          f"(counted {backward.get_total_flops()})")  # fmt: skip
    assert flops.forward == forward.get_total_flops()
    assert flops.backward == backward.get_total_flops()
    assert SPEC.block_flops(TINY, video_tokens, 7) == {"blocks": block.get_total_flops()}
    with pytest.raises(ConfigError):
        SPEC.flops(TINY, video_tokens, 7, image_condition=True)


# Wan-AI/*-Diffusers transformers: parameters and tensors of the released checkpoints
PUBLISHED = {
    "wan_1_3b": (16, 1_418_996_800, 825),
    "wan_14b": (16, 14_288_491_584, 1095),
    "wan22_5b": (48, 4_999_787_712, 825),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_sizes_have_the_published_parameter_counts(name):
    channels, params, tensors = PUBLISHED[name]
    cfg = model_config(name, latent_channels=channels)
    assert SPEC.parameter_count(cfg) == params
    with torch.device("meta"):
        assert len(SPEC.build(cfg).state_dict()) == tensors
    # 81 frames at 480x832: 21 x 30 x 52 tokens; the 5B at its 121 frames of 704x1280 (4x16x16 latents): 31 x 22 x 40
    tokens = 31 * 22 * 40 if channels == 48 else 21 * 30 * 52
    flops = SPEC.flops(cfg, tokens, 512)
    print(f"{name}: {params:,} parameters; {tokens} video + 512 text tokens: forward {flops.forward / 1e12:.1f} "
          f"TFLOP, train {flops.train / 1e12:.1f} TFLOP per sample")  # fmt: skip


def test_tiny_config_composes_with_the_tiny_text_encoder():
    cfg = model_config("wan_tiny", latent_channels=4, text_dim=64)
    assert (cfg.text_dim, cfg.latent_channels, cfg.hidden_size, cfg.family) == (64, 4, 32, "wan")
    te = OmegaConf.load(REPO / "configs/text_encoder/umt5_tiny.yaml")
    assert te.t5.dim == te.t5.tiny.d_model == cfg.text_dim
    assert SPEC.parameter_count(cfg) < 100_000


def test_lora_groups_each_target_linears_that_peft_adapts():
    from peft import LoraConfig, inject_adapter_in_model

    model = SPEC.build(TINY)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    x, t, t5 = inputs(TINY)
    with torch.no_grad():
        base = SPEC.forward(reference(TINY), x, t, t5, None)
    for group, patterns in SPEC.lora_groups.items():
        pattern = "|".join(f"(?:{p})" for p in patterns)
        matched = [n for n in linears if re.fullmatch(pattern, n)]
        assert matched, group
        adapted = reference(TINY)
        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=pattern), adapted)
        with_lora = {n.split(".lora_A")[0] for n, _ in adapted.named_parameters() if ".lora_A." in n}
        assert with_lora == set(matched), group
        with torch.no_grad():  # LoRA B starts at zero: the adapted model computes what the base does
            torch.testing.assert_close(SPEC.forward(adapted, x, t, t5, None), base)
    every = "|".join(f"(?:{p})" for ps in SPEC.lora_groups.values() for p in ps)
    assert {n for n in linears if not re.fullmatch(every, n)} == {
        "condition_embedder.time_embedder.linear_1",
        "condition_embedder.time_embedder.linear_2",
        "proj_out",
    }


def test_activation_checkpointing_per_block_gives_the_same_gradients():
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    plain = reference(TINY)
    wrapped = copy.deepcopy(plain)
    blocks = SPEC.blocks(wrapped)["blocks"]
    for i, block in enumerate(blocks):
        blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    x, t, t5 = inputs(TINY)
    for model in (plain, wrapped):
        SPEC.forward(model, x, t, t5, None).square().mean().backward()
    from opensora_lite.checkpoint.files import clean_key

    grads = {clean_key(n): p.grad for n, p in wrapped.named_parameters()}
    assert all(torch.allclose(p.grad, grads[n], atol=1e-7) for n, p in plain.named_parameters())


def test_umt5_text_encoder_masks_padding_and_loads_a_pipeline_text_encoder_folder(tmp_path):
    import transformers as tf

    from opensora_lite.config.schema import TextEncoderConfig
    from opensora_lite.text.encoders import TextEncoders

    te_cfg = OmegaConf.to_object(
        OmegaConf.merge(
            OmegaConf.structured(TextEncoderConfig), OmegaConf.load(REPO / "configs/text_encoder/umt5_tiny.yaml")
        )
    )
    enc = TextEncoders(te_cfg)
    assert isinstance(enc.t5, tf.UMT5EncoderModel)
    t5, _ = enc.encode(["a red square moves left", "a circle"])
    words = [5, 2]  # each caption's words and its eos token
    for row, n in zip(t5, words):
        assert row[: n + 1].abs().sum(-1).min() > 0 and row[n + 1 :].abs().sum() == 0
    # the caption's tokens do not depend on how much padding follows them
    te_cfg.t5.max_length = 4
    short, _ = TextEncoders(te_cfg).encode(["a circle"])
    torch.testing.assert_close(short[0, :3], t5[1, :3])

    # a diffusers pipeline's layout: text_encoder/ (UMT5) beside tokenizer/
    enc.t5.save_pretrained(tmp_path / "text_encoder")
    tf.ByT5Tokenizer().save_pretrained(tmp_path / "tokenizer")
    te_cfg.t5.path, te_cfg.t5.tiny, te_cfg.t5.max_length = str(tmp_path / "text_encoder"), None, 8
    loaded = TextEncoders(te_cfg)
    assert isinstance(loaded.t5, tf.UMT5EncoderModel) and isinstance(loaded.t5_tokenizer, tf.ByT5Tokenizer)
    assert all(torch.equal(a, b) for a, b in zip(loaded.t5.state_dict().values(), enc.t5.state_dict().values()))


def test_export_writes_a_folder_diffusers_loads(tmp_path):
    from diffusers import WanTransformer3DModel

    from opensora_lite.models.wan.export import export_diffusers

    state = reference(TINY).state_dict()
    written = SPEC.export({k: v.to(torch.bfloat16) for k, v in state.items()}, tmp_path / "one", "diffusers", TINY)
    assert sorted(p.name for p in written) == ["config.json", "diffusion_pytorch_model.safetensors"]
    sharded = export_diffusers(state, tmp_path / "shards", TINY, max_shard="20KB")
    assert any(p.name.endswith(".index.json") for p in sharded) and len(sharded) > 3
    for folder, dtype in (("one", torch.bfloat16), ("shards", torch.float32)):
        loaded = WanTransformer3DModel.from_pretrained(tmp_path / folder, torch_dtype=dtype).state_dict()
        assert sorted(loaded) == sorted(state)
        assert all(torch.equal(loaded[k], state[k].to(dtype)) for k in state), folder
        assert SPEC.read_weights(tmp_path / folder)[1] == "diffusers"
    with pytest.raises(ConfigError, match="exports diffusers, not bfl"):
        SPEC.export(state, tmp_path / "bfl", "bfl", TINY)
