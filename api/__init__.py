"""The service layer: composes the optimizer, the cache and the pipelines (CLI, REST API)."""
