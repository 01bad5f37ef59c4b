"""`cicdllm doctor` checks against real local parts: a git repo, an HTTP server on 127.0.0.1,
the file system."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from click.testing import CliRunner

from cicdllm_assets.cli.main import cli
from cicdllm_assets.config import load_settings
from cicdllm_assets.doctor import check_disk, check_server
from tests.generation_support import write_project_config


@contextmanager
def models_server(body: bytes) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering every GET with 200 and ``body``; yields its /v1 URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_server_model_list(project: Path) -> None:
    listing = json.dumps({"object": "list", "data": [{"id": "org/served"}]}).encode()
    with models_server(listing) as url:
        write_project_config(project, llm={"backend": "openai", "model": "org/served", "openai": {"base_url": url}})
        assert check_server(load_settings()).level == "ok"
        write_project_config(project, llm={"backend": "openai", "model": "org/other", "openai": {"base_url": url}})
        check = check_server(load_settings())
        assert check.level == "fail"
        assert check.message == (
            f"{url}/models does not list the model 'org/other' (it lists: org/served); "
            "set llm.openai.model (or llm.model) to one of them"
        )
    with models_server(b"") as url:  # what mlx_lm.server sends when the HF cache dir is missing
        write_project_config(project, llm={"backend": "openai", "model": "org/served", "openai": {"base_url": url}})
        check = check_server(load_settings())
        assert check.level == "warn" and "mkdir -p ~/.cache/huggingface/hub" in check.message


def test_disk_and_dagster_home_failures_say_what_to_set(project: Path, monkeypatch) -> None:
    settings = load_settings()
    check = check_disk(settings, min_free=1 << 60)
    assert check.level == "fail" and "set storage.data_dir to a larger disk" in check.message
    blocker = project / "not-a-dir"
    blocker.write_text("", encoding="utf-8")
    monkeypatch.setenv("DAGSTER_HOME", str(blocker / "home"))
    result = CliRunner().invoke(cli, ["doctor", "--json"], catch_exceptions=False)
    assert result.exit_code == 2
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["dagster_home"]["level"] == "fail"
    assert checks["dagster_home"]["message"].endswith("set DAGSTER_HOME to a writable directory")
    assert checks["disk"]["level"] == "ok"
