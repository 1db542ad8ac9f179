"""Names the rest of the framework chooses among, each written once: model families, engines and what
each can do, autoencoder kinds, stage kinds. A leaf: it imports nothing of the framework, so the config
checks, the planner and the engines read the same table without importing one another.
"""

from __future__ import annotations

# model.family -> the subpackage opensora_lite.models.<family> whose SPEC describes it (models/spec.py)
MODEL_FAMILIES = ("flux", "wan")
