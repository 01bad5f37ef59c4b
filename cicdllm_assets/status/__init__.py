"""Read-only status of a cicdllm project: per-repo counts, stage progress, runs, resources.

``model`` (the snapshot's dataclasses), ``readers`` (asset tables, state store, ledger),
``runs`` (the Dagster instance) and ``collect`` (one snapshot from all of them); the screens
that show it live in cli/ and tui/.
"""
