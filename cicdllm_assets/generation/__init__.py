"""Question and answer generation without Dagster: chunk selection, prompt themes and context,
the stage engine (concurrency, retries, leases), the resumable ledger and output parsing."""
