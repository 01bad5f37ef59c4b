"""LLM backends without Dagster: the backend interface, MLX in process, OpenAI-compatible HTTP,
token counting, OpenBLAS loading and model paths (Dagster resources live in resources/llm)."""
