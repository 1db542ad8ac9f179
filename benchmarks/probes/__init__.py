"""Research probes kept for what they showed (docs/tiny-curriculum.md cites them)."""
