"""Checkpoints, in one package: files (safetensors and DCP folders, consolidation), the trainer state,
a stage's checkpoints (atomic publish, pruning, final weights), background writes, and the optimizer
state of the DCP engines. It knows no model family and no engine class: engines call its DCP functions,
and the trainer hands it the engine for a write (docs/run-directory.md has the layout)."""
