"""Partition backfills of chosen repos through a running Dagster webserver (GraphQL).

``launchPartitionBackfill`` with ``assetSelection`` and ``partitionNames`` creates an
*asset* backfill: the daemon of ``dagster dev`` plans it, launches one run per repo
partition (respecting dependencies and the instance's run queue) and tracks it at
``<url>/runs/b/<backfill id>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from dagster import AssetKey

from cicdllm_assets.errors import CicdllmError

logger = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:3000"
FINISHED_OK = frozenset({"COMPLETED", "COMPLETED_SUCCESS"})
FINISHED_BAD = frozenset({"FAILED", "CANCELED", "COMPLETED_FAILED"})

LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on Error { message }
  }
}
"""

BACKFILL_STATUS = """
query BackfillStatus($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status numPartitions error { message } }
    ... on Error { message }
  }
}
"""

ASSET_PARTITIONS = """
query AssetPartitions($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode { partitionKeys }
    ... on Error { message }
  }
}
"""


class BackfillError(CicdllmError, RuntimeError):
    """The webserver refused the backfill or answered with an error."""


@dataclass(frozen=True)
class BackfillLaunch:
    """A launched backfill and where to watch it."""

    backfill_id: str
    url: str
    partitions: list[str]
    assets: list[str]

    @property
    def watch_url(self) -> str:
        """The backfill's page in the Dagster UI."""
        return f"{self.url.rstrip('/')}/runs/b/{self.backfill_id}"


class GraphQLClient:
    """A minimal client for the webserver's ``/graphql`` endpoint."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._http.close()

    def is_up(self) -> bool:
        """True when a Dagster webserver answers ``/server_info``."""
        try:
            response = self._http.get(f"{self.url}/server_info", timeout=3.0)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        try:
            info = response.json()
        except ValueError:
            return False
        return isinstance(info, dict) and "dagster_webserver_version" in info

    def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a query or mutation; raise :class:`BackfillError` on transport or GraphQL errors."""
        try:
            response = self._http.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}})
        except httpx.HTTPError as exc:
            raise BackfillError(f"cannot reach {self.url}/graphql: {exc}") from exc
        if response.status_code != 200:
            raise BackfillError(f"{self.url}/graphql answered HTTP {response.status_code}: {response.text[:500]}")
        payload = response.json()
        if payload.get("errors"):
            messages = "; ".join(str(e.get("message")) for e in payload["errors"])
            raise BackfillError(f"GraphQL error: {messages}")
        data: dict[str, Any] = payload.get("data") or {}
        return data


def _key_input(key: AssetKey) -> dict[str, list[str]]:
    return {"path": list(key.path)}


def fetch_partition_keys(client: GraphQLClient, asset: AssetKey) -> list[str]:
    """The partition keys the server knows for ``asset``."""
    node = client.execute(ASSET_PARTITIONS, {"key": _key_input(asset)})["assetNodeOrError"]
    if node["__typename"] != "AssetNode":
        raise BackfillError(f"asset {asset.to_user_string()}: {node.get('message', node['__typename'])}")
    return list(node.get("partitionKeys") or [])


def launch_backfill(
    client: GraphQLClient, partitions: Sequence[str], assets: Sequence[AssetKey], title: str | None = None
) -> BackfillLaunch:
    """Launch an asset backfill of ``assets`` for the given repo ``partitions``."""
    params: dict[str, Any] = {
        "partitionNames": list(partitions),
        "assetSelection": [_key_input(key) for key in assets],
        "tags": [{"key": "cicdllm/trigger", "value": "cli-backfill"}],
    }
    if title:
        params["title"] = title
    result = client.execute(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"backfill refused ({result['__typename']}): {result.get('message', '')}")
    return BackfillLaunch(
        backfill_id=str(result["backfillId"]),
        url=client.url,
        partitions=list(partitions),
        assets=[key.to_user_string() for key in assets],
    )


def backfill_status(client: GraphQLClient, backfill_id: str) -> tuple[str, str | None]:
    """(status, error message or None) of a backfill."""
    node = client.execute(BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
    if node["__typename"] != "PartitionBackfill":
        raise BackfillError(f"backfill {backfill_id}: {node.get('message', node['__typename'])}")
    error = node.get("error") or {}
    return str(node["status"]), error.get("message")


def wait_for_backfill(
    client: GraphQLClient, backfill_id: str, timeout: float, poll_seconds: float = 2.0
) -> tuple[str, str | None]:
    """Poll until the backfill finishes or ``timeout`` passes; return the last (status, error)."""
    deadline = time.monotonic() + timeout
    status, error = backfill_status(client, backfill_id)
    while status not in FINISHED_OK | FINISHED_BAD and time.monotonic() < deadline:
        time.sleep(poll_seconds)
        status, error = backfill_status(client, backfill_id)
    logger.debug("backfill %s: %s", backfill_id, status)
    return status, error
