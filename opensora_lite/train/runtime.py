"""What every stage of a run shares: config, run directory, engine, frozen encoders, tracker."""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.handlers
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from opensora_lite.autoencoders import Autoencoder, build_autoencoder
from opensora_lite.autoencoders.audio import AudioAutoencoder, build_audio_autoencoder
from opensora_lite.config.schema import AutoencoderConfig, Config
from opensora_lite.config.stages import stage_config
from opensora_lite.dtypes import set_tf32
from opensora_lite.layout import CONFIG_FILE, EMPTY_PROMPT_FILE
from opensora_lite.parallel import Engine, build_engine
from opensora_lite.text.encoders import TextEncoders
from opensora_lite.tracking import Tracker
from opensora_lite.train.preemption import PreemptionWatch

log = logging.getLogger("opensora_lite")


@dataclass
class Runtime:
    cfg: Config
    run_dir: Path
    engine: Engine
    text: TextEncoders
    ae: Autoencoder | None  # the run's autoencoder; None where no stage uses it (for_stage builds the others)
    tracker: Tracker
    preemption: PreemptionWatch = field(default_factory=PreemptionWatch)
    autoencoders: dict = field(default_factory=dict, repr=False)  # built ones by config, shared by for_stage views
    resolved: dict = field(default_factory=dict, repr=False)  # the config as config.yaml records it
    committed: list = field(default_factory=list, repr=False)  # [True] once commit() ran (shared by stage views)

    def commit(self, rewind_to: int | None = None) -> None:
        """The run directory becomes this run's: config.yaml, the log file, the empty prompt and the
        tracker's sinks. Stages call it once their weights and checkpoint are loaded, so a start refused
        before then (a checkpoint that does not fit a changed model, a broken file) leaves the directory
        exactly as it was. `rewind_to`: the global step a resumed stage continues from (the tracker drops
        what was logged after it). Later calls only rewind."""
        if self.committed:
            if rewind_to is not None:
                self.tracker.rewind(rewind_to)
            return
        self.committed.append(True)
        if self.engine.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.run_dir / ".config.yaml.partial"
            OmegaConf.save(OmegaConf.create(self.resolved), tmp)
            tmp.replace(self.run_dir / CONFIG_FILE)
            setup_logging(self.run_dir, True)
            self.text.keep_empty_with(self.run_dir / EMPTY_PROMPT_FILE, write=True)  # CFG's empty prompt
        self.tracker.start(rewind_to)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def stage_dir(self, name: str) -> Path:
        """runs/<run>/<stage>/ (layout.py)."""
        return self.run_dir / name

    def autocast(self) -> AbstractContextManager:
        if self.cfg.run.dtype == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def for_stage(self, name: str) -> Runtime:
        """This runtime as stage `name` sees it: the stage's effective config (config/stages.py) and its
        autoencoder, built on first use and shared by every stage with the same one. Autoencoders other
        stages use are parked on the CPU. The text encoders, engine and tracker are the run's."""
        view = stage_config(self.cfg, name)
        ae = self.autoencoder(view.autoencoder)
        if self.device.type != "cpu":
            for other in self.autoencoders.values():
                if other is not ae:
                    other.to("cpu")
        return dataclasses.replace(self, cfg=view, ae=ae)

    def autoencoder(self, cfg: AutoencoderConfig) -> Autoencoder:
        """The autoencoder of `cfg`, built once per run (the run's own is the first entry)."""
        key = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
        if key not in self.autoencoders:
            log.info("building autoencoder %s (%s)", cfg.kind, cfg.path or "no weights file")
            self.autoencoders[key] = build_autoencoder(cfg).to(self.device)
        return self.autoencoders[key]

    @property
    def audio_ae(self) -> AudioAutoencoder | None:
        """The run's audio autoencoder when its batches carry sound (data.audio.enabled), else None: what an
        audio_video stage encodes the sound with (train/tasks/audio_video.py)."""
        return self.audio_autoencoder() if self.cfg.data.audio.enabled else None

    def audio_autoencoder(self) -> AudioAutoencoder:
        """The run's audio autoencoder (`audio_autoencoder`), built once on first use; random weights (no
        path) are drawn from run.seed, so every rank and every rerun has the same ones."""
        key = "audio:" + json.dumps(dataclasses.asdict(self.cfg.audio_autoencoder), sort_keys=True, default=str)
        if key not in self.autoencoders:
            a = self.cfg.audio_autoencoder
            log.info("building audio autoencoder %s (%s)", a.kind, a.path or "no weights file")
            self.autoencoders[key] = build_audio_autoencoder(a, seed=self.cfg.run.seed).eval()
        return self.autoencoders[key].to(self.device)  # (for_stage parks the autoencoders a stage does not use)

    def place_encoders(self, device: torch.device | str) -> None:
        """Move the frozen encoders (and the autoencoder's encoder) to `device`: training from a latent
        cache parks them on the CPU, sampling brings them back. No-op when training runs on the CPU."""
        if self.device.type == "cpu":
            return
        self.text.to(device)
        if self.ae is not None:
            self.ae.to(device)
        if str(device) == "cpu":
            torch.cuda.empty_cache()

    def close(self, clean: bool = True) -> None:
        self.preemption.restore()
        self.tracker.close()
        self.engine.shutdown(clean)


def setup_logging(run_dir: Path | None, is_main: bool, hold: bool = False) -> None:
    """Console logging (rank 0 at INFO), and on rank 0 the run's logs/train.log. `hold`: no run
    directory yet; the file's records wait in memory until a later call names it (Runtime.commit)."""
    root = logging.getLogger("opensora_lite")
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    root.propagate = False
    if not root.handlers:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        root.addHandler(console)
    if not is_main:
        return
    held = [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)]
    if hold:  # an earlier run's file (or its held records) in this process: not this run's
        for h in [h for h in root.handlers if isinstance(h, (logging.FileHandler, logging.handlers.MemoryHandler))]:
            root.removeHandler(h)
            h.close()
        root.addHandler(logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1))
        return
    if run_dir is None:
        return
    path = (run_dir / "logs" / "train.log").resolve()
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        if Path(h.baseFilename) != path:  # an earlier run in this process: log into this run's file now
            root.removeHandler(h)
            h.close()
    if not any(isinstance(h, logging.FileHandler) for h in root.handlers):
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for h in held:  # what was logged before the run directory was this run's
            h.setTarget(fh)
            h.flush()
        root.addHandler(fh)
    for h in held:
        root.removeHandler(h)
        h.close()


def build_runtime(cfg: Config, run_dir: Path, resolved: dict) -> Runtime:
    """Everything stages share. Call after preflight() passed. Nothing is written into the run
    directory until the first stage commits it (Runtime.commit)."""
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    engine = build_engine(cfg.parallel, cfg.run.device)
    if engine.device.type == "cuda":
        set_tf32(cfg.run.tf32)
    setup_logging(run_dir, engine.is_main, hold=True)
    text = TextEncoders(cfg.text_encoder, engine.device)
    text.keep_empty_with(run_dir / EMPTY_PROMPT_FILE, write=False)  # written by commit(), once per run
    tracker = Tracker(cfg.logger, run_dir, cfg.run.name, resolved, active=engine.is_main)
    log.info(
        "run %s on %s (%d process%s), engine %s",
        run_dir,
        engine.device,
        engine.world_size,
        "es" if engine.world_size > 1 else "",
        cfg.parallel.engine,
    )
    rt = Runtime(cfg, run_dir, engine, text, None, tracker, resolved=resolved)
    if any(stage.autoencoder is None for stage in cfg.curriculum.stages.values()):
        rt.ae = rt.autoencoder(cfg.autoencoder)  # a stage's own autoencoder is built when it starts
    return rt


def memory_gib(device: torch.device) -> dict[str, float]:
    """This process's memory: resident host memory, and on a GPU the peak allocated since the last
    reset (per logging window) and what the caching allocator holds."""
    out = {"host_rss_gib": _rss_bytes() / 2**30}
    if device.type == "cuda":
        out["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["gpu_mem_reserved_gib"] = torch.cuda.memory_reserved(device) / 2**30
    return out


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak instead of the current size
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
