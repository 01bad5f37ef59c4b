"""Language detection from a file's name or extension."""

from __future__ import annotations

import posixpath

_EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyw": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".kts": "kotlin",
    ".scala": "scala",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".swift": "swift",
    ".m": "objective-c",
    ".mm": "objective-c",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".fish": "shell",
    ".lua": "lua",
    ".r": "r",
    ".jl": "julia",
    ".ex": "elixir",
    ".exs": "elixir",
    ".erl": "erlang",
    ".hrl": "erlang",
    ".hs": "haskell",
    ".ml": "ocaml",
    ".mli": "ocaml",
    ".clj": "clojure",
    ".cljs": "clojure",
    ".sql": "sql",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".toml": "toml",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rst": "rst",
    ".txt": "text",
    ".cfg": "ini",
    ".ini": "ini",
    ".env": "dotenv",
    ".json": "json",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".scss": "scss",
    ".vue": "vue",
    ".dart": "dart",
    ".zig": "zig",
    ".nim": "nim",
    ".pl": "perl",
    ".pm": "perl",
    ".ps1": "powershell",
    ".proto": "protobuf",
    ".tf": "terraform",
    ".xml": "xml",
    ".gradle": "groovy",
    ".groovy": "groovy",
    ".cmake": "cmake",
}

_FILENAMES: dict[str, str] = {
    "makefile": "makefile",
    "gnumakefile": "makefile",
    "dockerfile": "dockerfile",
    "containerfile": "dockerfile",
    "cmakelists.txt": "cmake",
    "jenkinsfile": "groovy",
    "rakefile": "ruby",
    "gemfile": "ruby",
    "vagrantfile": "ruby",
    "justfile": "just",
    "procfile": "text",
    "build": "starlark",
    "build.bazel": "starlark",
    "workspace": "starlark",
}

BRACE_LANGUAGES = frozenset(
    {
        "javascript",
        "typescript",
        "go",
        "rust",
        "java",
        "kotlin",
        "scala",
        "c",
        "cpp",
        "csharp",
        "php",
        "swift",
        "objective-c",
        "dart",
        "zig",
        "groovy",
        "css",
        "scss",
        "json",
        "protobuf",
        "terraform",
    }
)


def extension_of(path: str) -> str:
    """Lower-case extension including the dot (``""`` for none); ``.env`` files count as ``.env``."""
    name = posixpath.basename(path).lower()
    if name.startswith(".") and name.count(".") == 1:
        return name  # ".env", ".bashrc": the whole name is the extension
    _, ext = posixpath.splitext(name)
    return ext


def known_filename(path: str) -> bool:
    """True for extension-less files with a well-known name (Makefile, Dockerfile, ...)."""
    return posixpath.basename(path).lower() in _FILENAMES


def detect_language(path: str) -> str:
    """A language name for a repository path; ``"unknown"`` when nothing matches."""
    name = posixpath.basename(path).lower()
    if name in _FILENAMES:
        return _FILENAMES[name]
    if name.startswith("dockerfile."):
        return "dockerfile"
    return _EXTENSIONS.get(extension_of(path), "unknown")
