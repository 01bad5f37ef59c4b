"""Performance helpers: battery awareness for long generation runs."""
