"""OpenBLAS takes effect only when loaded before mlx; each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cicdllm_assets.llm.openblas import CORE_CPU_FLAGS, find_openblas, unsupported_core

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
try:  # absent from the global scope when OpenBLAS was not loaded into it
    libc.dladdr(ctypes.cast(libc.cblas_sgemm, ctypes.c_void_p), ctypes.byref(info))
    sgemm_from = info.fname.decode()
except AttributeError:
    sgemm_from = None
print(json.dumps({{"path": path, "effective": openblas.openblas_effective(), "ok": ok,
                  "mapped": "libopenblas" in maps, "sgemm_from": sgemm_from}}))
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


def test_a_build_for_a_core_this_cpu_lacks_is_not_loaded() -> None:
    # The installed build, on a CPU said to have no vector extensions: it is opened
    # locally, found unusable and never enters the global scope (mlx keeps working).
    result = _probe("from cicdllm_assets.llm import openblas as o; o.cpu_flags = lambda: frozenset()")
    assert result["ok"]
    assert result["path"] is None and result["effective"] is False
    assert "libopenblas" not in str(result["sgemm_from"])


SKYLAKEX_CONFIG = "OpenBLAS 0.3.31 NO_AFFINITY SKYLAKEX MAX_THREADS=4"
EPYC_NO_AVX512 = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"})


def test_core_check_refuses_avx512_kernels_on_a_cpu_without_them() -> None:
    # cmeel-openblas 0.3.31 (SKYLAKEX) died with SIGILL in sgemm_beta on an AMD EPYC without AVX-512.
    reason = unsupported_core(SKYLAKEX_CONFIG, "SKYLAKEX", EPYC_NO_AVX512)
    assert reason is not None and "avx512f" in reason
    assert unsupported_core(SKYLAKEX_CONFIG, "SKYLAKEX", EPYC_NO_AVX512 | CORE_CPU_FLAGS["skylakex"]) is None
    assert unsupported_core("OpenBLAS 0.3.29 NO_AFFINITY ZEN MAX_THREADS=4", "Zen", EPYC_NO_AVX512) is None
    assert unsupported_core("OpenBLAS 0.3.29 DYNAMIC_ARCH NO_AFFINITY Haswell", "Haswell", frozenset()) is None
    assert unsupported_core("OpenBLAS 0.3.29 NO_AFFINITY FUTURECORE", "FUTURECORE", EPYC_NO_AVX512) is not None


def test_install_picks_the_build_for_the_cpu() -> None:
    """``make install`` installs 0.3.31 (AVX-512 kernels) where the CPU has AVX-512 and keeps
    0.3.29 (AVX2) elsewhere; the build installed here is the one for this CPU."""

    from cicdllm_assets.llm.openblas import _core_of, _open_local, cpu_flags, wheel_for_cpu

    assert wheel_for_cpu(EPYC_NO_AVX512) == "cmeel-openblas==0.3.29"
    assert wheel_for_cpu(EPYC_NO_AVX512 | CORE_CPU_FLAGS["skylakex"]) == "cmeel-openblas==0.3.31"
    assert wheel_for_cpu(frozenset({"sse4_2", "avx"})) is None  # neither runs: nothing to install
    path = find_openblas()
    assert path is not None
    _, core = _core_of(_open_local(path))
    expected = {"cmeel-openblas==0.3.31": "SKYLAKEX", "cmeel-openblas==0.3.29": "ZEN"}[wheel_for_cpu(cpu_flags()) or ""]
    assert core.upper() == expected


def test_threads_follow_the_cores_other_processes_keep_busy_now(monkeypatch: pytest.MonkeyPatch) -> None:
    from cicdllm_assets.llm import openblas

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = openblas.busy_cores(0.5)
        assert busy is not None and busy >= 0.6  # a whole core spinning in another process
        monkeypatch.setattr(openblas.os, "cpu_count", lambda: 2)
        monkeypatch.setattr(openblas, "busy_cores", lambda seconds=0.3: busy)
        assert openblas.default_threads() == 1
    finally:
        burner.kill()
        burner.wait()
    # an idle machine whose 1-minute load average still counts a finished install: two threads
    monkeypatch.setattr(openblas, "busy_cores", lambda seconds=0.3: 0.1)
    monkeypatch.setattr(openblas.os, "getloadavg", lambda: (1.9, 1.5, 1.0))
    assert openblas.default_threads() == 2
