"""Build a git repository whose history is a project's successive releases, from PyPI sdists.

    python benchmarks/sdist_history.py DEST PACKAGE VERSION [VERSION ...]

Downloads each version's source distribution with ``pip download --no-deps --no-binary :all:``
and commits its unpacked tree as one commit, in the order given, so that
``benchmarks/incremental.py DEST --commits N`` can replay real release-to-release changes
of a project whose own git history is not at hand (no network for clones here).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def download(package: str, version: str, into: Path) -> Path:
    """The sdist of ``package==version`` (downloaded into ``into``)."""
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(into),
            f"{package}=={version}",
        ],
        check=True,
    )
    found = [p for p in into.iterdir() if version in p.name and p.name.endswith((".tar.gz", ".zip"))]
    if len(found) != 1:
        raise SystemExit(f"expected one sdist of {package} {version} in {into}, found {[p.name for p in found]}")
    return found[0]


def unpack(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest``, dropping its single top-level directory."""
    with tempfile.TemporaryDirectory() as tmp:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)  # noqa: S202 - a PyPI sdist we just downloaded
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
        (top,) = Path(tmp).iterdir()
        for item in top.iterdir():
            shutil.move(str(item), dest / item.name)


def build(dest: Path, package: str, versions: list[str]) -> None:
    """One commit per version in ``dest`` (a new repository)."""
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} exists and is not empty")
    dest.mkdir(parents=True, exist_ok=True)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(dest), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "bench@example.invalid")
    git("config", "user.name", "bench")
    with tempfile.TemporaryDirectory() as cache:
        for version in versions:
            for item in dest.iterdir():
                if item.name != ".git":
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
            unpack(download(package, version, Path(cache)), dest)
            git("add", "-A")
            git("commit", "-q", "--allow-empty", "-m", f"{package} {version}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path)
    parser.add_argument("package")
    parser.add_argument("versions", nargs="+")
    args = parser.parse_args(argv)
    build(args.dest, args.package, args.versions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
