"""Storage: Parquet asset tables with DuckDB views, and SQLite (WAL) live state."""
