"""Benchmarks (CPU, printed as tables and appended to docs/benchmarks.md with date, commit and machine),
the GPU suite (`gpu_suite.sh`, docs/gpu-suite.md) and their shared library (`benchlib.py`), plus the
reference Flux model they and the parity tests compare against (`flux_reference.py`). Run a benchmark
from the repository root as a module: `python -m benchmarks.bench_quickstart`. Research probes that
shaped the tiny curriculum live in `probes/`."""
