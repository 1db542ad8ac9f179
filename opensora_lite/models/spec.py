"""What the framework needs from a model family: the model spec.

Engines, the trainer and its tasks, validation, the planner and LoRA know a model only through its
spec: how to build it (on the meta device too), its repeated blocks (per-block sharding, activation
checkpointing, compile), its FLOPs, its weight formats, its LoRA target groups and how a batch becomes
its forward call. No code outside `models/<family>/` names a family's layers.

A family is a subpackage `models/<family>/` whose `SPEC` is a `ModelSpec`; `spec_for(cfg)` finds it by
the config's `family` (registered in opensora_lite/registry.py). torchtitan's model protocols were the
model for the idea (a train spec per model, engines that ask it for its blocks).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class FlopCount:
    """Matmul FLOPs of one sample: forward and backward (recomputation not counted)."""

    forward: float
    backward: float

    @property
    def train(self) -> float:
        return self.forward + self.backward


@dataclass
class Activations:
    """What a training step keeps for backward, per token and hidden unit (elements), measured with
    saved-tensor hooks: per block of each group, outside the blocks, and the fp32 extra per block under
    bf16 autocast. The planner turns it into bytes (plan/memory.py)."""

    width: int
    per_block: dict[str, float]
    blocks: dict[str, int]  # blocks per group
    outside: float
    fp32_under_bf16: float = 0.0


@dataclass(frozen=True)
class AudioStream:
    """What a model with an audio stream takes: audio latents [B, channels, frames, bins] at
    `latents_per_second` (the audio autoencoder's; the task checks they match)."""

    channels: int
    bins: int
    latents_per_second: float


@dataclass(frozen=True)
class Capabilities:
    """What a family can do; the start-up checks refuse the rest with one line naming the key."""

    image_condition: bool = False  # I2V / v2v tasks (a conditioning input)
    sequence_parallel: bool = False  # parallel.sp_size > 1 (an attention hook that splits tokens)
    meta_init: bool = False  # parallel.meta_init: initial_tensors() replays the CPU init per tensor
    export: tuple[str, ...] = ()  # osl-export formats
    pooled_text: bool = False  # takes the CLIP pooled vector beside the T5 tokens


class ModelSpec(ABC):
    """One model family. Subclasses are stateless; one instance per family (`SPEC`)."""

    family: ClassVar[str]
    config_class: ClassVar[type]
    capabilities: ClassVar[Capabilities] = Capabilities()
    # the repeated-block groups, in forward order: the keys of blocks() and of parallel.ac_blocks
    block_groups: ClassVar[tuple[str, ...]]
    # LoRA target groups (stage.lora.targets) -> regexes over module names (peft's target_modules)
    lora_groups: ClassVar[dict[str, tuple[str, ...]]] = {}
    lora_naming: ClassVar[str] = "lora"  # adapters files' metadata "naming" (ends in "lora")
    lora_also_train: ClassVar[tuple[str, ...]] = ()  # parameter prefixes that train beside the adapters
    weights_metadata: ClassVar[dict[str, str]] = {"format": "pt"}  # metadata of the final weights file

    # -- building ----------------------------------------------------------------------------------
    @abstractmethod
    def build(self, cfg: Any, image_condition: bool = False) -> nn.Module:
        """The model of `cfg` with its from-scratch initialisation (works inside torch.device("meta"))."""

    def initial_tensors(self, model: nn.Module, names: set[str] | None = None) -> Iterator[tuple[str, Tensor]]:
        """(name, full tensor) as building on the CPU with the same seed gives it, one at a time, for a
        model built on meta and sharded (parallel.meta_init). Families with capabilities.meta_init."""
        raise NotImplementedError(f"model family {self.family} cannot initialise a model built on meta")

    def blocks(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        """The model's repeated blocks by group (block_groups order). Engines shard, checkpoint and
        compile these one block at a time; everything else is sharded with the root."""
        return {group: getattr(model, group) for group in self.block_groups}

    def set_sequence_parallel(self, model: nn.Module, sp) -> None:
        """Split video (and audio) tokens over an SP group (parallel/sequence.py); families with the capability."""
        if sp is not None:
            raise NotImplementedError(f"model family {self.family} has no sequence parallelism")

    def has_image_condition(self, model: nn.Module) -> bool:
        """Whether this built model takes an I2V condition (a stage with i2v/v2v tasks builds one)."""
        return False

    def conditioned(self, state: dict[str, Tensor]) -> bool:
        """Whether weights (canonical names) are those of a model with an image condition."""
        return False

    def validate(self, cfg: Any, text_encoder: Any, key: str = "model") -> None:
        """Cross-field checks of this family's config (ConfigError naming `key`.<field>); none by default."""
        return None

    def heads(self, cfg: Any) -> int:
        """Attention heads (Ulysses sequence parallelism splits them)."""
        raise NotImplementedError

    def latent_layers(self) -> tuple[str, ...]:
        """Parameter prefixes whose shapes follow the latent space (channels x patch): a stage that
        switches autoencoder re-initialises them."""
        return ()

    # -- cost ----------------------------------------------------------------------------------------
    @abstractmethod
    def flops(
        self, cfg: Any, video_tokens: int, text_tokens: int, image_condition: bool = False, audio_tokens: int = 0
    ) -> FlopCount:
        """FLOPs of one sample of `video_tokens` tokens (after patching) and `text_tokens` text tokens (and
        `audio_tokens` through the audio stream of a family with one)."""

    def block_flops(self, cfg: Any, video_tokens: int, text_tokens: int, audio_tokens: int = 0) -> dict[str, float]:
        """Forward FLOPs of one block of each group (attention included): what activation checkpointing
        recomputes per block."""
        raise NotImplementedError

    def activations(self, cfg: Any) -> Activations:
        """Saved activations of a training step per token (the planner's memory model)."""
        raise NotImplementedError(f"model family {self.family} has no activation profile")

    def parameter_count(self, cfg: Any, image_condition: bool = False) -> int:
        """Parameters of the model of `cfg`, counted on the meta device (nothing allocated)."""
        with torch.device("meta"):
            model = self.build(cfg, image_condition)
        return sum(p.numel() for p in model.parameters())

    def patch_size(self, cfg: Any) -> tuple[int, int, int]:
        """The (t, h, w) patch over latents: video tokens = latent (t, h, w) // patch."""
        return tuple(cfg.patch_size)

    # -- weights -------------------------------------------------------------------------------------
    @abstractmethod
    def read_weights(self, path: Path) -> tuple[dict[str, Tensor], str]:
        """Full weights in this family's canonical names from any format it reads (its own checkpoints,
        single files or DCP folders, and the public formats), and the format's name."""

    def lazy_weights(self, path: Path):
        """A reader of row slices for meta-device starts (families with capabilities.meta_init)."""
        raise NotImplementedError(f"model family {self.family} has no rank-local weight reader")

    def optional_keys(self) -> tuple[str, ...]:
        """Key prefixes a checkpoint may lack (added on purpose and initialised: cond_in)."""
        return ()

    def export(self, state: dict[str, Tensor], out: Path, fmt: str, cfg: Any) -> list[Path]:
        """Write `state` (canonical names) in format `fmt` (one of capabilities.export)."""
        raise NotImplementedError(f"model family {self.family} exports no format")

    # -- the forward call ----------------------------------------------------------------------------
    @abstractmethod
    def forward(
        self,
        model: nn.Module,
        x: Tensor,
        t: Tensor,
        t5: Tensor,
        clip: Tensor | None,
        cond: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> Tensor:
        """The predicted velocity (noise - data) for latents x [B, C, T, H, W] at flow times t [B] in [0, 1]
        (0: data), given T5 tokens [B, L, D], the CLIP pooled vector [B, D'] (families with
        pooled_text), and the I2V condition [B, C+1, T, H, W] (mask channel first)."""

    # -- sound (docs/audio-video.md) ---------------------------------------------------------------------
    def audio_stream(self, cfg: Any) -> AudioStream | None:
        """The audio latents the model of `cfg` generates beside the video; None: a video-only model."""
        return None

    def forward_av(
        self,
        model: nn.Module,
        x: Tensor,
        t: Tensor,
        audio: Tensor,
        audio_t: Tensor,
        t5: Tensor,
        clip: Tensor | None,
        video_rate: float,
        cond: Tensor | None = None,
        guidance: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(video velocity, audio velocity) for video latents x at flow times t [B] and audio latents
        [B, C_a, T_a, F_a] at their own times audio_t [B]; `video_rate`: the video's latent frames a
        second (the two streams share a time line in seconds). Families whose audio_stream is not None."""
        raise NotImplementedError(f"model family {self.family} has no audio stream")


def spec_for(cfg: Any) -> ModelSpec:
    """The spec of a model config (its `family`), or of a family name."""
    from opensora_lite.registry import MODEL_FAMILIES

    family = cfg if isinstance(cfg, str) else getattr(cfg, "family", "flux")
    if family not in MODEL_FAMILIES:
        from opensora_lite.errors import ConfigError

        raise ConfigError("model.family", f"{family!r} is not a model family ({', '.join(MODEL_FAMILIES)})")
    return importlib.import_module(f"opensora_lite.models.{family}").SPEC
