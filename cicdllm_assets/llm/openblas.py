"""Load a real OpenBLAS into the global symbol scope before mlx is imported (Linux).

The Linux ``mlx[cpu]`` wheel links the reference BLAS (``cblas_sgemm`` at a few
GFLOP/s). Loading the ``cmeel-openblas`` wheel's ``libopenblas.so.0`` with
``RTLD_GLOBAL`` *before* mlx's shared library is loaded makes the dynamic linker
resolve mlx's BLAS symbols to OpenBLAS instead (~40x faster matmul).

It only takes effect if it runs before the first ``import mlx.core`` in the process:
once mlx's library is loaded its symbols are already bound. :func:`ensure_openblas`
therefore logs a warning when mlx was imported first, and every cicdllm module that
imports mlx calls it at the top.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import itertools
import logging
import os
import platform
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DISABLE_ENV = "CICDLLM_NO_OPENBLAS"
"""Set to 1 to skip loading OpenBLAS (e.g. to measure the reference BLAS)."""

GFORTRAN_SONAME = b"libgfortran.so.5"

_lock = threading.Lock()
_state: dict[str, object] = {"done": False, "path": None, "effective": False}


def find_openblas() -> Path | None:
    """Path of the cmeel-openblas wheel's ``libopenblas.so.0``, or None when not installed."""
    try:
        dist = importlib.metadata.distribution("cmeel-openblas")
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = [f for f in (dist.files or []) if Path(str(f)).name.startswith("libopenblas.so")]
    # Prefer the soname mlx would ask for, then any other variant.
    candidates.sort(key=lambda f: (Path(str(f)).name != "libopenblas.so.0", str(f)))
    for file in candidates:
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            return path
    return None


# What an OpenBLAS built for one x86-64 core (no DYNAMIC_ARCH) executes: the cmeel-openblas
# wheels are such builds, each for its build machine (0.3.29: ZEN, 0.3.31: SKYLAKEX), and
# AVX-512 kernels on a CPU without AVX-512 kill the process with SIGILL at the first sgemm.
_AVX512 = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"})
_AVX2 = frozenset({"avx", "avx2", "fma"})
CORE_CPU_FLAGS: dict[str, frozenset[str]] = {
    "sapphirerapids": _AVX512 | {"avx512_bf16"},
    "cooperlake": _AVX512 | {"avx512_bf16"},
    "skylakex": _AVX512,
    "haswell": _AVX2,
    "zen": _AVX2,
    "excavator": _AVX2,
    "sandybridge": frozenset({"avx"}),
    "bulldozer": frozenset({"avx"}),
    "piledriver": frozenset({"avx", "fma"}),
    "steamroller": frozenset({"avx", "fma"}),
    "nehalem": frozenset({"sse4_2"}),
    "core2": frozenset({"ssse3"}),
    "prescott": frozenset(),
}


WHEELS: tuple[tuple[str, str], ...] = (("skylakex", "0.3.31"), ("zen", "0.3.29"))
"""cmeel-openblas releases on PyPI and the one core each is built for, widest vector units
first (0.3.31: AVX-512 kernels, 0.3.29: AVX2)."""


def wheel_for_cpu(flags: frozenset[str] | None = None) -> str | None:
    """The cmeel-openblas requirement whose build runs fastest on a CPU with ``flags`` (this
    one's by default); None when none of them runs on it."""
    flags = cpu_flags() if flags is None else flags
    for core, version in WHEELS:
        if CORE_CPU_FLAGS[core] <= flags:
            return f"cmeel-openblas=={version}"
    return None


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def unsupported_core(config: str, core: str, flags: frozenset[str]) -> str | None:
    """Why an OpenBLAS build cannot run on a CPU with ``flags`` (None when it can).

    ``config``/``core`` are ``openblas_get_config()``/``openblas_get_corename()``. A
    DYNAMIC_ARCH build picks its kernels at run time and always fits.
    """
    if "DYNAMIC_ARCH" in config.split():
        return None
    required = CORE_CPU_FLAGS.get(core.lower())
    if required is None:
        return f"it is built for the unknown core {core!r} only"
    missing = sorted(required - flags)
    if missing:
        return f"it is built for {core} only and this CPU lacks {', '.join(missing)}"
    return None


def _core_of(lib: ctypes.CDLL) -> tuple[str, str]:
    """(config, core name) of a loaded OpenBLAS."""
    lib.openblas_get_config.restype = ctypes.c_char_p
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return lib.openblas_get_config().decode(), lib.openblas_get_corename().decode()


def _load_openblas(path: Path) -> str | None:
    """dlopen OpenBLAS globally unless it cannot run on this CPU (then: why not).

    It is opened locally first to ask which core it was built for, so an unusable
    build never enters the global scope mlx binds against. A bundled libgfortran is
    supplied if the system has none.
    """
    lib = _open_local(path)
    if platform.machine().lower() in ("x86_64", "amd64"):
        config, core = _core_of(lib)
        reason = unsupported_core(config, core, cpu_flags())
        if reason is not None:
            return reason
    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    return None


def _open_local(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)
    except OSError as exc:
        if "libgfortran" not in str(exc):
            raise
        first_error = exc
    # The wheel needs libgfortran.so.5, which many slim systems lack. mlx/numpy wheels
    # bundle one under a hashed soname; load a copy renamed to libgfortran.so.5 so the
    # dynamic linker satisfies OpenBLAS's dependency with it.
    gfortran = _provide_libgfortran()
    if gfortran is None:
        raise first_error
    logger.debug("using bundled libgfortran %s for OpenBLAS", gfortran)
    return ctypes.CDLL(str(path), mode=ctypes.RTLD_LOCAL)


def _bundled_libgfortran() -> Path | None:
    """A libgfortran shipped inside an installed wheel (mlx_cpu.libs, numpy.libs, ...)."""
    roots = {Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()}
    for root in sorted(roots):
        for libs in ("mlx_cpu.libs", "numpy.libs", "scipy.libs"):
            for candidate in sorted((root / libs).glob("libgfortran*.so.5*")):
                if candidate.is_file():
                    return candidate
    return None


def _elf_dynamic(data: bytes) -> tuple[int, int | None, list[int]]:
    """(file offset of .dynstr, DT_SONAME offset, DT_NEEDED offsets) of a 64-bit LE ELF."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise OSError("not a 64-bit little-endian ELF file")
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise OSError("ELF file has no dynamic section")
    strtab_vaddr: int | None = None
    soname: int | None = None
    needed: list[int] = []
    for j in range(dynamic[1] // 16):
        tag, value = struct.unpack_from("<qQ", data, dynamic[0] + 16 * j)
        if tag == 0:
            break
        if tag == 5:
            strtab_vaddr = value
        elif tag == 14:
            soname = value
        elif tag == 1:
            needed.append(value)
    if strtab_vaddr is None:
        raise OSError("ELF file has no DT_STRTAB")
    for vaddr, offset, size in loads:
        if vaddr <= strtab_vaddr < vaddr + size:
            return strtab_vaddr - vaddr + offset, soname, needed
    raise OSError("DT_STRTAB is outside every PT_LOAD segment")


def _cstring(data: bytes | bytearray, start: int) -> bytes:
    return bytes(data[start : data.index(b"\0", start)])


def _provide_libgfortran() -> Path | None:
    """Load a bundled libgfortran under the soname ``libgfortran.so.5``; return the copy."""
    source = _bundled_libgfortran()
    if source is None:
        return None
    data = bytearray(source.read_bytes())
    strtab, soname, needed = _elf_dynamic(bytes(data))
    # Its own dependencies (libquadmath-<hash>.so) sit next to it: load them first.
    for offset in needed:
        dep = source.parent / _cstring(data, strtab + offset).decode()
        if dep.is_file():
            ctypes.CDLL(str(dep), mode=ctypes.RTLD_GLOBAL)
    if soname is None:
        return None
    old = _cstring(data, strtab + soname)
    if len(old) < len(GFORTRAN_SONAME):
        return None
    data[strtab + soname : strtab + soname + len(GFORTRAN_SONAME) + 1] = GFORTRAN_SONAME + b"\0"
    stat = source.stat()
    target_dir = _cache_dir() / f"{source.name}-{stat.st_size}-{int(stat.st_mtime)}"
    target = target_dir / GFORTRAN_SONAME.decode()
    if not target.is_file() or target.read_bytes() != bytes(data):
        target_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    ctypes.CDLL(str(target), mode=ctypes.RTLD_GLOBAL)
    return target


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cicdllm" / "openblas"


def ensure_openblas(enabled: bool = True) -> str | None:
    """Load OpenBLAS globally once per process; return its path (None if not loaded).

    Idempotent and thread-safe: the first call decides. No-op on macOS (mlx uses
    Accelerate there), when the wheel is missing, when ``enabled`` is False
    (``llm.mlx.use_openblas: false``) or when ``$CICDLLM_NO_OPENBLAS`` is set.
    """
    with _lock:
        if _state["done"]:
            return _state["path"]  # type: ignore[return-value]
        _state["done"] = True
        disabled = not enabled or os.environ.get(DISABLE_ENV, "") not in ("", "0")
        if not sys.platform.startswith("linux") or disabled:
            return None
        mlx_loaded = "mlx.core" in sys.modules
        path = find_openblas()
        if path is None:
            logger.warning("cmeel-openblas is not installed: mlx will use the slow reference BLAS")
            return None
        try:
            unusable = _load_openblas(path)
        except OSError as exc:
            logger.warning("could not load OpenBLAS from %s: %s", path, exc)
            return None
        if unusable is not None:
            logger.warning("not using OpenBLAS from %s: %s; mlx keeps the slow reference BLAS", path, unusable)
            return None
        _state["path"] = str(path)
        _state["effective"] = not mlx_loaded
        if not any(os.environ.get(name) for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")):
            set_openblas_threads(default_threads())
        if mlx_loaded:
            logger.warning(
                "mlx was imported before OpenBLAS was loaded; matmul stays on the reference BLAS. "
                "Call ensure_openblas() before the first `import mlx`."
            )
        else:
            logger.debug("loaded OpenBLAS from %s", path)
        return str(path)


BUSY_SAMPLE_SECONDS = 0.3
"""How long :func:`busy_cores` watches the CPU."""


def busy_cores(seconds: float = BUSY_SAMPLE_SECONDS) -> float | None:
    """Cores other processes keep busy right now: ``/proc/stat`` sampled over ``seconds``, minus
    this process's own CPU time (None where ``/proc/stat`` cannot be read)."""

    def sample() -> tuple[float, float, float]:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        own = os.times()
        return sum(fields[:8]), idle, own.user + own.system

    try:
        total0, idle0, own0 = sample()
        time.sleep(seconds)
        total1, idle1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    ticks = total1 - total0
    if ticks <= 0:
        return None
    busy = (ticks - (idle1 - idle0)) / ticks * cores  # in cores
    return max(0.0, busy - (own1 - own0) / seconds)


def default_threads() -> int:
    """BLAS threads for this machine right now: the cores other processes do not keep busy
    (at least 1), sampled from ``/proc/stat`` (else the 1-minute load average).

    OpenBLAS worker threads spin while waiting; on a shared, loaded CPU two spinning
    threads per process make matmul ~10x slower than one thread. The load average lags by a
    minute: right after ``make install`` it still says "busy" on an idle machine, and one
    thread instead of two costs a quarter of the prefill rate (docs/models.md).
    """
    cores = os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except OSError:
            busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def set_openblas_threads(threads: int) -> bool:
    """Set OpenBLAS's thread count at run time; False when OpenBLAS is not loaded."""
    path = _state["path"]
    if not isinstance(path, str):
        return False
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        lib.openblas_set_num_threads(ctypes.c_int(max(1, threads)))
    except (OSError, AttributeError):
        return False
    _state["threads"] = max(1, threads)
    logger.debug("OpenBLAS threads: %d", threads)
    return True


def openblas_threads() -> int | None:
    """The thread count set by :func:`set_openblas_threads` (None when left to OpenBLAS)."""
    value = _state.get("threads")
    return value if isinstance(value, int) else None


def openblas_effective() -> bool:
    """True when OpenBLAS was loaded before mlx in this process."""
    return bool(_state["effective"])


def matmul_gflops(n: int = 512, repeats: int = 5) -> float:
    """mlx float32 ``n x n`` matmul speed on the CPU in GFLOP/s: best of ``repeats`` (imports mlx)."""
    import time

    ensure_openblas()
    import mlx.core as mx

    with mx.stream(mx.cpu):
        a = mx.random.normal((n, n))
        b = mx.random.normal((n, n))
        mx.eval(a @ b)
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            mx.eval(a @ b)
            best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / max(best, 1e-9) / 1e9


NUMPY_BLAS_GLOBS = ("libscipy_openblas*.so*", "libopenblas*.so*")
"""numpy's own OpenBLAS in the wheel's ``numpy.libs`` (a second OpenBLAS next to mlx's)."""
NUMPY_BLAS_PREFIXES = ("scipy_openblas", "openblas")
NUMPY_BLAS_SUFFIXES = ("64_", "_64_", "")


@functools.cache
def _numpy_blas() -> tuple[Any, Any] | None:
    """``(set_num_threads, get_num_threads)`` of numpy's OpenBLAS; None when numpy uses another BLAS."""
    import numpy

    libs = Path(numpy.__file__).resolve().parent.parent / "numpy.libs"
    for path in (path for pattern in NUMPY_BLAS_GLOBS for path in sorted(libs.glob(pattern))):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for prefix, suffix in itertools.product(NUMPY_BLAS_PREFIXES, NUMPY_BLAS_SUFFIXES):
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                return setter, getter
    return None


@contextlib.contextmanager
def numpy_blas_threads(threads: int) -> Iterator[int | None]:
    """Inside, numpy's OpenBLAS uses ``threads`` threads; yields the count before (None, and
    changes nothing, when numpy uses another BLAS).

    numpy's wheel carries its own OpenBLAS, whose idle worker threads spin for a while after
    each call: in a prefill, numpy's attention and mlx's matmuls alternate dozens of times a
    step, and each library's spinning threads take a core from the other's (with numpy's BLAS
    on two threads, prefill ran at about 60 % of its rate on one, measured while writing this).
    """
    blas = _numpy_blas()
    if blas is None:
        yield None
        return
    setter, getter = blas
    before = int(getter())
    if before != threads:
        setter(ctypes.c_int(max(1, threads)))
    try:
        yield before
    finally:
        if before != threads:
            setter(ctypes.c_int(before))


if __name__ == "__main__":  # `make install`: which build to install on this CPU
    print(wheel_for_cpu() or "")
