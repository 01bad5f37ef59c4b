"""The one partitioning of the pipeline: a dynamic partition per repository."""

from dagster import DynamicPartitionsDefinition

REPOS_PARTITIONS_NAME = "repos"
repos_partitions = DynamicPartitionsDefinition(name=REPOS_PARTITIONS_NAME)
