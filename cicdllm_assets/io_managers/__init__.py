"""The Dagster IO manager storing each asset partition as one Parquet file (``storage.tables``)."""

from cicdllm_assets.io_managers.parquet_io_manager import PartitionedParquetIOManager

__all__ = ["PartitionedParquetIOManager"]
