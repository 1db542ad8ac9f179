"""Test-only: let ColossalAI's ZeRO code run on a CPU with gloo.

ColossalAI 0.5.0's CPU accelerator raises on the CUDA stream and synchronize calls its ZeRO optimizer
makes, and the optimizer asserts a CUDA/NPU device. On a CPU every operation is already synchronous
on one stream, so the faithful stand-ins are: streams that are the current stream, synchronize and
wait as no-ops. Nothing else changes: the plugins, the ZeRO partitioning, reduce-scatter, master
weights, clipping and the checkpoint IO are ColossalAI's own code.

Applied in two ways: `install()` from a test's worker process, or automatically in every Python
process started with this folder on PYTHONPATH (this file is a `sitecustomize`), e.g. torchrun's
workers. The patch is made the first time colossalai's CPU accelerator module is imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys


class _Stream:
    """The one implicit CPU stream."""

    def wait_stream(self, other) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event=None):
        return event


def _patch_accelerator(module) -> None:
    cls = module.CpuAccelerator
    cls.Stream = lambda self, *args, **kwargs: _Stream()
    cls.current_stream = lambda self, *args, **kwargs: _Stream()
    cls.default_stream = lambda self, *args, **kwargs: _Stream()
    cls.stream = lambda self, stream: contextlib.nullcontext()
    cls.synchronize = lambda self, *args, **kwargs: None


def _patch_zero() -> None:
    from colossalai.accelerator import get_accelerator
    from colossalai.zero.low_level.low_level_optim import LowLevelZeroOptimizer

    original = LowLevelZeroOptimizer._sanity_checks
    if getattr(original, "_cpu_shim", False):
        return

    def sanity_checks(self):  # keep its dtype checks; only the device assert is lifted
        acc = get_accelerator()
        name = acc._name
        acc._name = "cuda"
        try:
            original(self)
        finally:
            acc._name = name

    sanity_checks._cpu_shim = True
    LowLevelZeroOptimizer._sanity_checks = sanity_checks


def install() -> None:
    import colossalai.accelerator.cpu_accelerator as module

    _patch_accelerator(module)
    _patch_zero()


class _Finder(importlib.abc.MetaPathFinder):
    """Patches colossalai right after its low-level ZeRO optimizer module is first imported."""

    target = "colossalai.zero.low_level.low_level_optim"

    def find_spec(self, name, path=None, target=None):
        if name != self.target:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            sys.modules[name] = module
            install()

        loader.exec_module = exec_and_patch
        return spec


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
