"""Command-line interface: `cicdllm run|status|export|repos|config|model|backfill`."""
