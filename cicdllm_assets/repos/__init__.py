"""Repositories: repos.txt parsing, clone/fetch into the cache, licence detection, per-repo processing."""
