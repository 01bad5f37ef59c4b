"""`cicdllm doctor` (and `cicdllm config validate --deep`): can this project run here?

Each check returns a :class:`Check`: ``ok``, ``warn`` (runs, but not as well as it could) or
``fail`` (a run would fail); a failure's message says exactly what to set or run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from cicdllm_assets.config import Settings

Level = Literal["ok", "warn", "fail"]
MIN_FREE_BYTES = 1 << 30
"""Free space below this on the data directory's disk fails the disk check."""
REPO_CHECK_TIMEOUT_SECONDS = 30.0
SERVER_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    """One diagnosis: what was checked, the verdict and the message (with the fix on failure)."""

    name: str
    level: Level
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return asdict(self)


def check_repos(settings: Settings) -> list[Check]:
    """repos.txt parses and every repository (and its ref) answers ``git ls-remote``."""
    from cicdllm_assets.repos.git_ops import GitError, check_reachable
    from cicdllm_assets.repos.repos_file import ReposFileError, read_repos_file

    try:
        entries = read_repos_file(settings.repos_file)
    except ReposFileError as exc:
        return [Check("repos", "fail", f"{exc} (fix these lines of {settings.repos_file})")]
    if not entries:
        return [Check("repos", "warn", f"{settings.repos_file} lists no repository: add one with `cicdllm repos add`")]
    checks = []
    timeout = min(REPO_CHECK_TIMEOUT_SECONDS, float(settings.config.repos.clone_timeout_seconds))
    for entry in entries:
        try:
            found = check_reachable(entry, timeout)
        except GitError as exc:
            fix = f"fix line {entry.line_no} of {settings.repos_file}"
            checks.append(Check(f"repo {entry.key}", "fail", f"{exc} ({fix})"))
            continue
        checks.append(Check(f"repo {entry.key}", "ok", found))
    return checks


def check_model(settings: Settings) -> Check:
    """The mlx model resolves to a local directory (or a hub id that may be downloaded)."""
    from cicdllm_assets.llm.models.paths import ModelNotPreparedError
    from cicdllm_assets.llm.models.paths import check_model as locate

    try:
        location = locate(settings.model_paths)
    except ModelNotPreparedError as exc:
        return Check("model", "fail", str(exc))
    if not Path(location).is_dir():
        return Check("model", "warn", f"{location} is not in the Hugging Face cache: the first run downloads it")
    return Check("model", "ok", f"llm.model {settings.config.llm.model!r} -> {location}")


def check_server(settings: Settings) -> Check:
    """The OpenAI-compatible server answers ``GET /models`` and serves the configured model."""
    import httpx

    from cicdllm_assets.llm.openai_backend import SERVER_DEFAULT_MODEL, OpenAIBackend

    config = OpenAIBackend.from_model_paths(settings.model_paths).config
    url = f"{config.base_url}/models"
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=SERVER_TIMEOUT_SECONDS)
    except httpx.HTTPError as exc:
        return Check(
            "server",
            "fail",
            f"no OpenAI-compatible server answers {url} ({type(exc).__name__}: {exc}); start it "
            "(e.g. `mlx_lm.server --model <model>`) or set llm.openai.base_url to its URL up to /v1",
        )
    if response.status_code in (401, 403):
        return Check(
            "server",
            "fail",
            f"{url} refused the API key (HTTP {response.status_code}); "
            f"set {settings.config.llm.openai.api_key_env or 'llm.openai.api_key_env'} or llm.openai.api_key",
        )
    if response.status_code != 200:
        return Check("server", "fail", f"{url} answered HTTP {response.status_code}; check llm.openai.base_url")
    try:
        listed = [str(item.get("id")) for item in response.json().get("data", []) if isinstance(item, dict)]
    except (ValueError, AttributeError):
        return Check(
            "server",
            "warn",
            f"{url} answers but not with a JSON model list, so {config.model!r} cannot be checked "
            "(mlx_lm.server does this when the HF cache directory is missing: mkdir -p ~/.cache/huggingface/hub)",
        )
    if config.model == SERVER_DEFAULT_MODEL:
        return Check("server", "ok", f"{url} answers; requests use the server's default model")
    wanted = {config.model, str(settings.resolve(config.model))}
    if wanted & set(listed):
        return Check("server", "ok", f"{url} serves {config.model!r}")
    return Check(
        "server",
        "fail",
        f"{url} does not list the model {config.model!r} (it lists: {', '.join(listed) or 'none'}); "
        "set llm.openai.model (or llm.model) to one of them",
    )


def check_tokenizer(settings: Settings) -> Check:
    """A tokenizer for counting and chunking resolves (an approximation is a warning)."""
    from cicdllm_assets.llm.models.paths import ModelNotPreparedError, resolve_tokenizer

    try:
        choice = resolve_tokenizer(settings.model_paths)
    except ModelNotPreparedError as exc:
        return Check("tokenizer", "fail", str(exc))
    if choice.approximate:
        return Check(
            "tokenizer",
            "warn",
            f"{choice.source}: budgets get a safety margin; set processing.tokenizer "
            "to the model's tokenizer.json for exact counts",
        )
    return Check("tokenizer", "ok", f"{choice.path} ({choice.source})")


def check_prompts(settings: Settings) -> Check:
    """The configured themes' prompt templates load."""
    from cicdllm_assets.generation.prompts import prompt_problems, resolve_prompts_dir

    generation = settings.config.generation
    problems = prompt_problems(generation, settings.prompts_dir)
    if problems:
        return Check("prompts", "fail", "; ".join(problems) + " (fix the templates or generation.themes)")
    return Check("prompts", "ok", str(resolve_prompts_dir(generation, settings.prompts_dir)))


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_disk(settings: Settings, min_free: int = MIN_FREE_BYTES) -> Check:
    """Enough free space where tables, clones and models go."""
    where = _existing_parent(settings.data_dir)
    free = shutil.disk_usage(where).free
    shown = f"{free / (1 << 30):.1f} GiB free on the disk of {settings.data_dir}"
    if free < min_free:
        return Check(
            "disk",
            "fail",
            f"only {shown} (need {min_free / (1 << 30):.1f} GiB); free space or set storage.data_dir to a larger disk",
        )
    return Check("disk", "ok", shown)


def check_dagster_home(settings: Settings) -> Check:
    """DAGSTER_HOME (or storage.dagster_home) exists or can be created, and is writable."""
    home = settings.dagster_home
    source = "DAGSTER_HOME" if os.environ.get("DAGSTER_HOME") else "storage.dagster_home"
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(
            "dagster_home", "fail", f"{home} is not writable ({exc.strerror}); set {source} to a writable directory"
        )
    return Check("dagster_home", "ok", f"{home} ({source}) is writable")


def run_checks(settings: Settings) -> list[Check]:
    """Every check for the configured backend, in a fixed order."""
    backend_checks: list[Callable[[Settings], Check]] = (
        [check_server] if settings.config.llm.backend == "openai" else [check_model]
    )
    checks = check_repos(settings)
    for check in [*backend_checks, check_tokenizer, check_prompts, check_disk, check_dagster_home]:
        checks.append(check(settings))
    return checks
