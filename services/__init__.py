"""driftloop services: each sub-package owns one concern (embedded stack,
checkpoint store, version pointer, model server, feedback ingestion, replay,
CLI)."""
