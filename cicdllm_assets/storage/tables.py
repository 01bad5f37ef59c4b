"""Asset tables: one Parquet file per asset partition, queried through DuckDB views.

Writers write a temp file and rename it over the partition file, so a reader sees
either the old or the new table, never half of one, and no writer ever holds a lock
that another writer or reader could trip on (unlike one shared DuckDB database file).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

UNPARTITIONED = "__all__"
_SAFE = re.compile(r"[^A-Za-z0-9._@=-]")


def partition_file_name(partition_key: str) -> str:
    """A file name for a partition key (keys are readable; anything odd is escaped)."""
    return _SAFE.sub(lambda m: f"%{ord(m.group()):02X}", partition_key) + ".parquet"


def partition_key_of(file_name: str) -> str:
    """The partition key a ``<key>.parquet`` file name stands for (inverts :func:`partition_file_name`)."""
    stem = file_name[: -len(".parquet")] if file_name.endswith(".parquet") else file_name
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), stem)


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` as Parquet to ``path`` via a temp file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp_name, compression="zstd")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


class TableStore:
    """Reads and writes asset partitions under ``root/<asset>/<partition>.parquet``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, asset: str, partition_key: str | None) -> Path:
        """Location of one asset partition's file."""
        return self.root / asset / partition_file_name(partition_key or UNPARTITIONED)

    def write(self, asset: str, partition_key: str | None, table: pa.Table) -> Path:
        """Atomically replace one partition's table."""
        path = self.path_for(asset, partition_key)
        write_table_atomic(table, path)
        return path

    def read(self, asset: str, partition_key: str | None) -> pa.Table | None:
        """One partition's table, or None if it was never written."""
        path = self.path_for(asset, partition_key)
        try:
            return pq.read_table(path)
        except FileNotFoundError:
            return None

    def delete(self, asset: str, partition_key: str | None) -> None:
        """Forget one partition (e.g. its repo left repos.txt)."""
        self.path_for(asset, partition_key).unlink(missing_ok=True)

    def files(self, asset: str) -> list[Path]:
        """Every partition file of an asset (temp files excluded)."""
        directory = self.root / asset
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))

    def partition_files(self, asset: str, partition_keys: Iterable[str] | None = None) -> list[Path]:
        """Files of all partitions, or of the given keys that exist."""
        if partition_keys is None:
            return self.files(asset)
        return [p for p in (self.path_for(asset, k) for k in partition_keys) if p.exists()]

    def row_count(self, asset: str, partition_keys: Iterable[str] | None = None) -> int:
        """Rows of an asset over all (or the given) stored partitions, read from the Parquet footers."""
        total = 0
        for path in self.partition_files(asset, partition_keys):
            try:
                total += pq.ParquetFile(path).metadata.num_rows
            except FileNotFoundError:  # removed between listing and reading
                continue
        return total

    def read_all(self, asset: str, partition_keys: Iterable[str] | None = None) -> pa.Table | None:
        """Concatenate partitions (all, or the given keys that exist); None if there are none.

        Columns a partition lacks are null; a column one partition wrote narrower (``int32``
        line numbers of an older ``code_chunks``) is widened, see :mod:`.contract`."""
        tables = []
        for path in self.partition_files(asset, partition_keys):
            try:
                tables.append(pq.read_table(path))
            except FileNotFoundError:  # removed between listing and reading
                continue
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def connect(self, assets: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with one view per asset over its Parquet files.

        Each caller gets its own connection, so readers never contend for a lock.
        Assets with no files yet are left out rather than failing the query set-up.
        """
        con = duckdb.connect(":memory:")
        names = list(assets) if assets is not None else sorted(p.name for p in self.root.glob("*") if p.is_dir())
        for name in names:
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or not self.files(name):
                continue
            pattern = str(self.root / name / "*.parquet").replace("'", "''")
            # name is a checked identifier and pattern is quoted: no injection.
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{pattern}', union_by_name = true)"  # noqa: S608
            )
        return con
