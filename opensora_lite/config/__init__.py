"""The config: `schema.py` (the one typed schema, dataclasses only), `load.py` (Hydra registration, typed
loading with the unknown-key and cross-field checks), `validate.py` (the cross-field checks) and
`stages.py` (a stage's effective config). Import the module you need: this package's own `__init__`
stays empty, because loading the schema must not load the checks (they read the model families and
registries above it in docs/design.md's layer table)."""
