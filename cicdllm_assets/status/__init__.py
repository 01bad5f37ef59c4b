"""Read-only status of a cicdllm project: per-repo counts, stage progress, runs, resources."""
