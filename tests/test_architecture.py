"""Import direction, read from the AST of every module of the package (docs/architecture.md).

* Domain packages (config, storage, sources, llm, repos, discovery, chunking, generation,
  quality, export, finetune, performance, and the ``errors`` and ``lifecycle`` modules) never import Dagster nor
  the layers above them: the Dagster glue (assets, automation, io_managers, resources,
  definitions, partitions, failures) and the application (runner, status, cli, tui, doctor).
* No import cycle between top-level packages (every import counts, those inside functions too).
"""

from __future__ import annotations

import ast
import builtins
from collections import defaultdict
from pathlib import Path

import pytest

from cicdllm_assets.errors import CicdllmError
from cicdllm_assets.sources.git import GitError

PACKAGE = Path(__file__).resolve().parents[1] / "cicdllm_assets"
NAME = PACKAGE.name

DOMAIN = frozenset(
    {
        "config",
        "storage",
        "sources",
        "llm",
        "repos",
        "discovery",
        "chunking",
        "generation",
        "quality",
        "export",
        "finetune",
        "performance",
        "errors",
        "lifecycle",
    }
)
GLUE = frozenset(
    {"assets", "automation", "io_managers", "resources", "code_location", "definitions", "partitions", "failures"}
)
APPLICATION = frozenset({"runner", "status", "cli", "tui", "doctor"})
EXTERNAL_FORBIDDEN_IN_DOMAIN = ("dagster", "dagster_webserver", "dagster_postgres")


def top_level(path: Path, root: Path = PACKAGE) -> str:
    """The top-level package (or module) of ``path`` inside ``root``: ``chunking``, ``errors``."""
    return path.relative_to(root).parts[0].removesuffix(".py")


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = [NAME, *path.relative_to(root).parent.parts]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                found.append((node.lineno, module))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def module_graph(root: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """Edges between top-level packages, and every domain import that breaks the direction."""
    edges: dict[str, set[str]] = defaultdict(set)
    violations: list[str] = []
    for path in sorted(root.rglob("*.py")):
        source = top_level(path, root)
        for line, module in imports(path, root):
            parts = module.split(".")
            where = f"{path.relative_to(root.parent).as_posix()}:{line} imports {module}"
            if parts[0] == NAME and len(parts) > 1 and parts[1] != source:
                edges[source].add(parts[1])
                if source in DOMAIN and parts[1] not in DOMAIN:
                    violations.append(where)
            elif source in DOMAIN and parts[0] in EXTERNAL_FORBIDDEN_IN_DOMAIN:
                violations.append(where)
    return edges, violations


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(set(edges) | {t for targets in edges.values() for t in targets}):
        if node not in index:
            visit(node)
    return found


def test_every_top_level_package_has_a_layer() -> None:
    names = {top_level(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert names - (DOMAIN | GLUE | APPLICATION) == set()


def test_domain_packages_never_import_dagster_or_upper_layers() -> None:
    _, violations = module_graph()
    assert violations == []


def test_no_import_cycles_between_top_level_packages() -> None:
    edges, _ = module_graph()
    assert cycles(edges) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    package = root / NAME
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"chunking/a.py": "import dagster\n"}, ["cicdllm_assets/chunking/a.py:1 imports dagster"]),
        (
            {"llm/a.py": "def f():\n    from cicdllm_assets.runner import x\n"},
            ["cicdllm_assets/llm/a.py:2 imports cicdllm_assets.runner"],
        ),
        (
            {"generation/a.py": "from ..assets import x\n"},
            ["cicdllm_assets/generation/a.py:1 imports cicdllm_assets.assets"],
        ),
        ({"assets/a.py": "import dagster\nfrom cicdllm_assets.chunking import x\n"}, []),
    ],
)
def test_the_check_sees_forbidden_imports(tmp_path: Path, files: dict[str, str], expected: list[str]) -> None:
    assert module_graph(_write(tmp_path, files))[1] == expected


def test_the_check_sees_a_cycle_through_a_lazy_import(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "discovery/a.py": "from cicdllm_assets.chunking.b import y\n",
            "chunking/b.py": "def f():\n    from cicdllm_assets.discovery import a\n",
            "export/c.py": "from cicdllm_assets.chunking import b\n",
        },
    )
    assert cycles(module_graph(package)[0]) == [["chunking", "discovery"]]


def test_every_exception_class_of_the_package_derives_from_cicdllm_error() -> None:
    """Read from the AST: a class whose base is a builtin exception must also name CicdllmError."""
    exceptions = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                if bases & exceptions and "CicdllmError" not in bases and node.name != "CicdllmError":
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.name}")
    assert offenders == []
    assert issubclass(GitError, CicdllmError) and GitError("x", permanent=True).permanent is True


def settings_importers(root: Path = PACKAGE) -> list[str]:
    """Domain modules (``config`` aside) that import the name ``Settings`` from ``cicdllm_assets.config``:
    domain code receives the config sections and resolved paths it needs, never the whole ``Settings``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = top_level(path, root)
        if source not in DOMAIN or source == "config":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith(f"{NAME}.config")
                and any(alias.name == "Settings" for alias in node.names)
            ):
                found.append(f"{path.relative_to(root.parent).as_posix()}:{node.lineno}")
    return found


def test_domain_code_never_receives_the_whole_settings() -> None:
    assert settings_importers() == []


def test_the_check_sees_a_settings_import(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "export/a.py": "def f():\n    from cicdllm_assets.config.loader import Settings\n",
            "config/b.py": "from cicdllm_assets.config.loader import Settings\n",
            "cli/c.py": "from cicdllm_assets.config import Settings\n",
            "llm/d.py": "from cicdllm_assets.config import AppConfig, load_settings\n",
        },
    )
    assert settings_importers(package) == ["cicdllm_assets/export/a.py:2"]
