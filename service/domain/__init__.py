"""The service's domain: streams and templates (registry), validation (ingest), the engine's worker."""
