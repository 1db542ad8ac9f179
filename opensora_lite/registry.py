"""Names the rest of the framework chooses among, each written once: model families, engines and what
each can do, autoencoder kinds, stage kinds. A leaf: it imports nothing of the framework, so the config
checks, the planner, the checkpoint readers and the engines read the same table without importing one
another.
"""

from __future__ import annotations

from dataclasses import dataclass

# model.family -> the subpackage opensora_lite.models.<family> whose SPEC describes it (models/spec.py)
MODEL_FAMILIES = ("flux", "wan")

# stage.kind -> what a step computes (train/tasks/)
STAGE_KINDS = ("diffusion", "autoencoder", "audio_video", "distill")
DISTILL_METHODS = ("dmd2",)

# data.audio.layout -> channels (FFmpeg's layout names): the sound the loader gives and ingest stores
AUDIO_LAYOUTS = {"mono": 1, "stereo": 2}

# autoencoder.kind -> opensora_lite/autoencoders/; TRAINABLE: kinds an autoencoder stage can train
AUTOENCODER_KINDS = ("pixel", "hunyuan", "hunyuan15", "wan", "ltx", "dc_ae")
TRAINABLE_AUTOENCODERS = ("dc_ae",)

# audio_autoencoder.kind -> opensora_lite/autoencoders/ (mel_ae.py, ltx2_audio.py); TRAINABLE_AUDIO_AUTOENCODERS:
# kinds an autoencoder stage with reconstruction.modality=audio can train
AUDIO_AUTOENCODER_KINDS = ("mel_ae", "ltx2_audio")
TRAINABLE_AUDIO_AUTOENCODERS = ("mel_ae",)

# audio_autoencoder.vocoder.kind: log-mel -> waveform for listening
VOCODER_KINDS = ("griffin_lim", "ltx2")

# stage.reconstruction.modality: which autoencoder an autoencoder stage trains (train/tasks/reconstruction.py)
RECONSTRUCTION_MODALITIES = ("video", "audio")


@dataclass(frozen=True)
class EngineInfo:
    """One engine (`parallel.engine`) and what it can do."""

    name: str
    memory: str  # how parameters, gradients and optimizer state lie: replicated | zero2 | zero3 (plan/memory.py)
    optimizer_folder: str  # a checkpoint's optimizer state (layout.py names)
    package: str | None = None  # the Python package it needs (installed separately)
    doc: str = "docs/engines/README.md"
    writes_async: bool = False  # background checkpoint writes (its checkpoints are DCP folders)
    meta_init: bool = False  # parallel.meta_init: builds the model sharded, each rank reads its shards
    sequence_parallel: bool = True  # parallel.sp_size > 1
    hsdp: bool = False  # parallel.hsdp_replicas > 1
    options: bool = False  # parallel.options: backend settings passed through
    lora: bool = False  # stage.lora
    autoencoder_stage: bool = False  # stage.kind=autoencoder
    ema: bool = True  # stage.ema_decay > 0 (the full weights are at hand to average)


ENGINES: dict[str, EngineInfo] = {
    e.name: e
    for e in (
        EngineInfo("single", "replicated", "optim_dcp", writes_async=True, lora=True, autoencoder_stage=True),
        EngineInfo("ddp", "replicated", "optim_dcp", writes_async=True, lora=True, autoencoder_stage=True),
        EngineInfo(
            "fsdp2",
            "zero3",
            "optim_dcp",
            doc="docs/engines/fsdp2.md",
            writes_async=True,
            meta_init=True,
            hsdp=True,
            lora=True,
            autoencoder_stage=True,
        ),
        EngineInfo(
            "colossalai_zero2",
            "zero2",
            "optim_colossalai",
            "colossalai",
            "docs/engines/colossalai.md",
            sequence_parallel=False,
            options=True,
        ),
        EngineInfo(
            "colossalai_hybrid_sp",
            "zero2",
            "optim_colossalai",
            "colossalai",
            "docs/engines/colossalai.md",
            options=True,
        ),
        EngineInfo(
            "deepspeed_zero2",
            "zero2",
            "optim_deepspeed",
            "deepspeed",
            "docs/engines/deepspeed.md",
            options=True,
            lora=True,
        ),
        EngineInfo(
            "deepspeed_zero3",
            "zero3",
            "optim_deepspeed",
            "deepspeed",
            "docs/engines/deepspeed.md",
            meta_init=True,
            options=True,
            ema=False,
        ),
    )
}


def engines_with(capability: str) -> tuple[str, ...]:
    """The engines that have `capability` (an EngineInfo flag), in table order."""
    return tuple(name for name, info in ENGINES.items() if getattr(info, capability))
