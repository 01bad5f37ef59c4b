"""`cicdllm repos`: list, add and sync the repositories of repos.txt.

Exit codes: 0 success, 2 invalid input (bad entry, invalid repos.txt or config; every bad line
is printed with its line number), 1 other errors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from dagster import DagsterInstance

from cicdllm_assets.cli.common import fail_usage, load_settings_or_exit
from cicdllm_assets.config import Settings
from cicdllm_assets.partitions import REPOS_PARTITIONS_NAME
from cicdllm_assets.repos.repos_file import (
    RepoEntry,
    ReposFileError,
    parse_repos_lenient,
    parse_repos_text,
    read_repos_file,
    redact_credentials,
)
from cicdllm_assets.runner.instance import sync_partitions


def _instance(settings: Settings) -> DagsterInstance:
    from cicdllm_assets.runner.instance import InstanceError, open_instance

    # Dagster's storage migrations log every step at INFO through alembic; keep the CLI readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return open_instance(settings)
    except InstanceError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(name="repos")
def command() -> None:
    """Manage the repositories listed in repos.txt (one Dagster partition each)."""


@command.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def list_cmd(as_json: bool) -> None:
    """List repos.txt entries with their partition keys and Dagster registration."""
    settings = load_settings_or_exit()
    try:
        entries = read_repos_file(settings.repos_file)
    except ReposFileError as exc:
        fail_usage(str(exc))
    registered = set(_instance(settings).get_dynamic_partitions(REPOS_PARTITIONS_NAME))
    rows = [{**entry.to_dict(), "registered": entry.key in registered} for entry in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no repositories in {settings.repos_file}")
        return
    width = max(len(str(row["key"])) for row in rows)
    for row in rows:
        mark = "registered" if row["registered"] else "not registered (run `cicdllm repos sync`)"
        ref = f"@{row['ref']}" if row["ref"] else ""
        click.echo(f"{row['key']:<{width}}  {row['url']}{ref}  [{mark}]")
    stale = sorted(registered - {str(row["key"]) for row in rows})
    for key in stale:
        click.echo(f"{key:<{width}}  (registered, no longer in repos.txt)")


@command.command(name="add")
@click.argument("spec", nargs=-1, required=True)
@click.option("--no-preview", is_flag=True, help="Do not clone/fetch to count the files that would be kept.")
def add_cmd(spec: tuple[str, ...], no_preview: bool) -> None:
    """Append SPEC (URL[@ref] or local path, then optional include=GLOB exclude=GLOB) to repos.txt
    after validating it; then clone or fetch it and print how many files would be kept."""
    settings = load_settings_or_exit()
    path = settings.repos_file
    try:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
    parts = [part.strip() for part in spec]
    entry_text = " ".join(parts).strip()
    if not entry_text or entry_text.startswith("#") or "\n" in entry_text or "\r" in entry_text:
        fail_usage(f"not a repository entry: {redact_credentials(entry_text)!r}")
    if any(ch.isspace() for ch in parts[0]) and parts[0][:1] not in ("'", '"') and '"' not in parts[0]:
        parts[0] = f'"{parts[0]}"'  # a local path with spaces is written quoted
        entry_text = " ".join(parts)
    separator = "" if not current or current.endswith("\n") else "\n"
    updated = f"{current}{separator}{entry_text}\n"
    line_no = updated.count("\n")
    try:
        entries = parse_repos_text(updated, path.parent, str(path))
    except ReposFileError as exc:
        fail_usage(str(exc))
    added = next(entry for entry in entries if entry.line_no == line_no)
    _write_atomic(path, updated)
    click.echo(f"added {added.key} ({redact_credentials(added.url)}{'@' + added.ref if added.ref else ''}) to {path}")
    if not no_preview:
        _preview(settings, added)
    click.echo("run `cicdllm repos sync` (or let the repos sensor run) to register it with Dagster")


def _preview(settings: Settings, entry: RepoEntry) -> None:
    """Clone/fetch ``entry`` into the cache (the run reuses it) and print what its filters keep."""
    from cicdllm_assets.discovery.discover import NO_FILES_KEPT_HINT, preview_kept
    from cicdllm_assets.repos.git_ops import GitError, sync_repo

    try:
        checkout = sync_repo(entry, settings.cache_dir, float(settings.config.repos.clone_timeout_seconds))
    except GitError as exc:
        click.echo(f"warning: cannot count its files yet: {exc}", err=True)
        return
    processing = entry.processing(settings.config.processing)
    kept, total, skipped = preview_kept(checkout.path, checkout.head_commit, processing)
    reasons = ", ".join(f"{n} {category}" for category, n in skipped.most_common())
    click.echo(
        f"{kept} of {total} files at {checkout.head_commit[:12]} would be kept"
        + (f" ({reasons} skipped)" if reasons else "")
    )
    if kept == 0:
        click.echo(f"warning: no file would be kept: {NO_FILES_KEPT_HINT}", err=True)


@command.command(name="remove")
@click.argument("key_or_spec")
def remove_cmd(key_or_spec: str) -> None:
    """Remove the repos.txt line whose partition key or entry text is KEY_OR_SPEC."""
    settings = load_settings_or_exit()
    path = settings.repos_file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        fail_usage(f"cannot read {path}: {exc.strerror}")
    entries, _ = parse_repos_lenient(text, path.parent)
    matches = [entry for entry in entries if key_or_spec in (entry.key, entry.spec)]
    if not matches:
        fail_usage(f"no entry with partition key or text {redact_credentials(key_or_spec)!r} in {path}")
    drop = {entry.line_no for entry in matches}
    kept = [line for number, line in enumerate(text.splitlines(keepends=True), start=1) if number not in drop]
    _write_atomic(path, "".join(kept))
    for entry in matches:
        click.echo(f"removed {entry.key} (line {entry.line_no}) from {path}")
    click.echo("run `cicdllm repos sync` (or let the repos sensor run) to drop its partition")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@command.command(name="sync")
@click.option("--json", "as_json", is_flag=True, help="Print {added, removed} as JSON.")
def sync_cmd(as_json: bool) -> None:
    """Register repos.txt entries as Dagster partitions and drop removed ones."""
    settings = load_settings_or_exit()
    instance = _instance(settings)
    try:
        added, removed = sync_partitions(instance, settings)
    except ReposFileError as exc:
        fail_usage(str(exc))
    if as_json:
        click.echo(json.dumps({"added": added, "removed": removed}))
        return
    for key in added:
        click.echo(f"added    {key}")
    for key in removed:
        click.echo(f"removed  {key}")
    total = len(instance.get_dynamic_partitions(REPOS_PARTITIONS_NAME))
    home = Path(settings.dagster_home)
    click.echo(f"{len(added)} added, {len(removed)} removed, {total} registered (DAGSTER_HOME={home})")
