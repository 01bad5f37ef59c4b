"""IO managers."""

from cicdllm_assets.io_managers.parquet_io_manager import PartitionedParquetIOManager

__all__ = ["PartitionedParquetIOManager"]
