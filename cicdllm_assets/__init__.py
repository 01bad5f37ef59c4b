"""cicdllm: git repositories in, fine-tuning datasets out (layers: docs/architecture.md)."""
