"""`osl-cache`: precompute the latent cache of a curriculum's stages ahead of training.

osl-cache data=cached                                   # every stage of the tiny curriculum
osl-cache experiment=opensora2 data.kind=cached run.stage=t2v_256px data.cache_dir=/fs/cache
torchrun --nproc-per-node 8 -m opensora_lite.cli.cache experiment=opensora2 data.kind=cached

Each rank encodes its share of the source shards; a rerun keeps the finished shards. Training with
the same config then reads the cache (docs/data.md#latent-cache).
"""

from __future__ import annotations

from omegaconf import DictConfig

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.autoencoders.audio import build_audio_autoencoder
from opensora_lite.cli.common import hydra_entry, load
from opensora_lite.config.stages import stage_config
from opensora_lite.data.cache import build_cache
from opensora_lite.diffusion.conditioning import uses_image_condition
from opensora_lite.parallel import build_engine
from opensora_lite.text.encoders import TextEncoders
from opensora_lite.train.preemption import PreemptionWatch
from opensora_lite.train.preflight import check_data
from opensora_lite.train.runtime import setup_logging


def run(cfg: DictConfig) -> list:
    """Build (or find) the cache of every stage, or of `run.stage`; returns the folders."""
    typed, _ = load(cfg)
    names = [typed.run.stage] if typed.run.stage else list(typed.curriculum.stages)
    check_data(typed)
    engine = build_engine(typed.parallel, typed.run.device)  # no run directory: the cache is not a run
    setup_logging(None, engine.is_main)
    clean = False
    watch = PreemptionWatch()  # a stop signal: finish the shard in hand, exit 3 (requeued on Slurm); a rerun resumes
    try:
        text = TextEncoders(typed.text_encoder, engine.device)
        built: dict[str, object] = {}  # one autoencoder per distinct config (a stage may switch: stage.autoencoder)
        audio_ae = None  # with sound, the run's audio autoencoder (seeded as the run seeds it: Runtime)
        if typed.data.audio.enabled:
            audio_ae = build_audio_autoencoder(typed.audio_autoencoder, seed=typed.run.seed).eval().to(engine.device)
        folders = []
        for name in names:
            view = stage_config(typed, name)
            key = repr(view.autoencoder)
            if key not in built:
                for other in built.values():
                    other.to("cpu")  # one autoencoder on the device at a time
                built[key] = build_autoencoder(view.autoencoder).to(engine.device)
            ae = built[key].to(engine.device)
            stage = typed.curriculum.stages[name]
            condition = uses_image_condition(stage.tasks)
            folders.append(build_cache(view, name, condition, ae, text, engine, watch=watch, audio_ae=audio_ae))
        if engine.is_main:
            for name, folder in zip(names, folders):
                print(f"{name}: {folder}", flush=True)
        clean = True
        return folders
    finally:
        watch.restore()
        engine.shutdown(clean)


@hydra_entry("config", validate_on_print=True)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
