"""File discovery without Dagster: every file tracked at a commit, kept or skipped with a reason
(globs, extensions, lock files, symlinks, size, binary or generated content), with cached
verdicts and token counts."""
