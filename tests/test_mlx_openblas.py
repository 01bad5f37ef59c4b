"""OpenBLAS takes effect only when loaded before mlx; each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cicdllm_assets.llm.openblas import find_openblas

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or find_openblas() is None,
    reason="OpenBLAS preloading applies to Linux with cmeel-openblas installed",
)

PROBE = """
import json, sys
{first}
from cicdllm_assets.llm import openblas
path = openblas.ensure_openblas()
import mlx.core as mx
a = mx.ones((64, 64))
ok = bool(mx.allclose(a @ a, mx.full((64, 64), 64.0)).item())
maps = open("/proc/self/maps").read()
import ctypes
class DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]
libc = ctypes.CDLL(None)
info = DlInfo()
libc.dladdr(ctypes.cast(libc.cblas_sgemm, ctypes.c_void_p), ctypes.byref(info))
print(json.dumps({{"path": path, "effective": openblas.openblas_effective(), "ok": ok,
                  "mapped": "libopenblas" in maps, "sgemm_from": info.fname.decode()}}))
"""


def _probe(first: str = "") -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)], capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_loaded_before_mlx_is_effective() -> None:
    result = _probe()
    assert result["path"] and result["mapped"] and result["ok"]
    assert result["effective"] is True
    # The global symbol scope mlx binds against resolves cblas_sgemm to OpenBLAS.
    assert "libopenblas" in str(result["sgemm_from"])


def test_mlx_imported_first_is_detected() -> None:
    result = _probe("import mlx.core")
    assert result["ok"]
    assert result["effective"] is False
