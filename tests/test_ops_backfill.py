"""`cicdllm backfill` without a webserver (in-process fallback) and its input checks.

The GraphQL path against a real ``dagster dev`` is in test_ops_webserver.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.runner.backfill import BackfillError, GraphQLClient


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class _NotDagster(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>some other server</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def other_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotDagster)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_client_tells_a_dagster_webserver_from_anything_else(other_server: str) -> None:
    assert GraphQLClient(_closed_port_url()).is_up() is False
    client = GraphQLClient(other_server)
    assert client.is_up() is False
    with pytest.raises(BackfillError, match="HTTP 500"):
        client.execute("{ __typename }")
    client.close()


def test_backfill_runs_in_process_when_no_webserver(project: Path, make_git_repo) -> None:
    one = make_git_repo("one", {"x.py": "x = 1\n"})
    two = make_git_repo("two", {"y.py": "y = 2\n"})
    (project / "repos.txt").write_text(f"{one.path}\n{two.path}\n", encoding="utf-8")
    result = CliRunner().invoke(
        cli,
        ["backfill", "--repo", "local-two", "--select", "key:repositories", "--url", _closed_port_url(), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "no Dagster webserver" in result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "in_process"
    assert [(r["name"], r["status"]) for r in data["repos"]] == [("local-two", "done")]
    assert data["repos"][0]["head_commit"] == two.git("rev-parse", "HEAD")


def test_backfill_rejects_bad_input(project: Path, make_git_repo) -> None:
    repo = make_git_repo("solo")
    (project / "repos.txt").write_text(f"{repo.path}\n", encoding="utf-8")
    runner = CliRunner()
    url = _closed_port_url()

    result = runner.invoke(cli, ["backfill", "--select", "key:repositories", "--url", url])
    assert result.exit_code == 2 and "--repo" in result.output  # required

    result = runner.invoke(cli, ["backfill", "--repo", "local-zzz", "--select", "key:repositories", "--url", url])
    assert result.exit_code == 2
    assert "unknown repo partition(s) ['local-zzz']" in result.stderr

    result = runner.invoke(cli, ["backfill", "--repo", "local-solo", "--select", "key:nope", "--url", url])
    assert result.exit_code == 2
    assert "matches no asset" in result.stderr
