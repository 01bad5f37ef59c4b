"""Chunking without Dagster: syntax-aware chunk plans within a token budget (cached per blob),
secret redaction and the ``code_chunks`` rows."""
