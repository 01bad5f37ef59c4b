"""IO manager storing each asset partition as one Parquet file (see storage.tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext

from cicdllm_assets.config import load_settings
from cicdllm_assets.storage.tables import TableStore

ROW_COUNT = "dagster/row_count"
PARTITION_ROW_COUNT = "dagster/partition_row_count"
URI = "dagster/uri"


def table_location_metadata(path: Path, partition_rows: int | None, total_rows: int) -> dict[str, Any]:
    """Row counts and location of a stored table (``partition_rows`` None: unpartitioned)."""
    metadata: dict[str, Any] = {
        ROW_COUNT: MetadataValue.int(total_rows),
        URI: MetadataValue.text(path.resolve().as_uri()),
        "path": MetadataValue.path(str(path)),
    }
    if partition_rows is not None:
        metadata[PARTITION_ROW_COUNT] = MetadataValue.int(partition_rows)
    return metadata


class PartitionedParquetIOManager(ConfigurableIOManager):
    """Writes ``pa.Table`` outputs atomically; loads one partition or all of them."""

    config_path: str = ""

    def _store(self) -> TableStore:
        # load_settings parses the file once per version: every load and store of a step
        # sees the config its asset step loaded.
        return TableStore(load_settings(self.config_path or None).tables_dir)

    def handle_output(self, context: OutputContext, obj: pa.Table | None) -> None:
        """Persist a table (``None`` writes nothing) and record its row counts and location.

        Entries the asset already set on its Output (``training_dataset`` reports the exported
        dataset, not the summary table it returns) are left as they are.
        """
        if obj is None:
            return
        if not isinstance(obj, pa.Table):
            name = context.asset_key.to_user_string()
            raise TypeError(f"{name} must return a pyarrow.Table, got {type(obj).__name__}")
        key = context.partition_key if context.has_partition_key else None
        store = self._store()
        asset = context.asset_key.path[-1]
        path = store.write(asset, key, obj)
        metadata = table_location_metadata(
            path, obj.num_rows if key else None, store.row_count(asset) if key else obj.num_rows
        )
        given = context.output_metadata or {}
        context.add_output_metadata({k: v for k, v in metadata.items() if k not in given})

    def load_input(self, context: InputContext) -> pa.Table:
        """One partition's table, or all requested partitions concatenated."""
        asset = context.asset_key.path[-1]
        store = self._store()
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            table = store.read(asset, keys[0]) if len(keys) == 1 else store.read_all(asset, keys)
        else:
            table = store.read(asset, None)
        if table is None:
            raise FileNotFoundError(f"no stored table for {asset} (materialize it first)")
        return table
