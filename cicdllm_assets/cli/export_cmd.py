"""``cicdllm export``: write the dataset from the stored ``qa_pairs`` tables (no generation)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from cicdllm_assets.assets._export import export_with_settings
from cicdllm_assets.cli.common import load_cli_settings
from cicdllm_assets.config import ConfigError, Settings
from cicdllm_assets.config.models import EXPORT_FORMATS
from cicdllm_assets.export.dataset import ExportInputError
from cicdllm_assets.repos.repos_file import ReposFileError, read_repos_file
from cicdllm_assets.storage.tables import TableStore, partition_file_name

logger = logging.getLogger(__name__)


@click.command(name="export")
@click.option(
    "--format",
    "-f",
    "formats",
    multiple=True,
    type=click.Choice(EXPORT_FORMATS),
    help="Format to write (repeatable; default: export.formats from the config).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output directory (default: export.out_dir from the config).",
)
@click.option(
    "--all-partitions",
    "all_partitions",
    is_flag=True,
    help="Also export stored qa_pairs of repositories no longer listed in repos.txt.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
def command(formats: tuple[str, ...], out_dir: Path | None, all_partitions: bool, as_json: bool) -> None:
    """Export the latest dataset from the stored qa_pairs tables without re-running generation.

    Applies the licence allow-list, cross-repository dedup, a secret re-scan and the
    file-disjoint split, then writes every format, README.md (dataset card) and
    manifest.json. Exit codes: 0 written, 1 nothing to export, 2 bad config or format.
    """
    try:
        settings = load_cli_settings()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    store = TableStore(settings.tables_dir)
    keys, skipped = _partitions(settings, store, all_partitions)
    qa_pairs = store.partition_files("qa_pairs", keys)
    if not qa_pairs:
        raise click.ClickException(
            f"no qa_pairs tables under {settings.tables_dir}: materialize qa_pairs first (cicdllm run)"
        )
    try:
        repositories = store.read_all("repositories")
        result = export_with_settings(
            qa_pairs, settings, out_dir=out_dir, repositories=repositories, formats=list(formats) or None
        )
    except ExportInputError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    splits = result.split_counts()
    if skipped and not as_json:
        click.echo(
            f"Skipped {len(skipped)} stored repo(s) not in repos.txt (use --all-partitions): " + ", ".join(skipped)
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "out_dir": str(result.out_dir),
                    "pairs": result.exported_pairs,
                    "splits": splits,
                    "rejections": result.rejections,
                    "excluded_repos": result.excluded_repos,
                    "redactions": result.redactions,
                    "files": [
                        {"format": f.format, "split": f.split, "path": str(f.path), "rows": f.rows}
                        for f in result.files
                    ],
                    "notes": result.notes,
                    "skipped_partitions": skipped,
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"Exported {result.exported_pairs} pairs to {result.out_dir} "
        f"(train {splits['train']}, valid {splits['valid']}, test {splits['test']}; "
        f"{result.input_pairs} generated, {result.accepted_pairs} accepted)"
    )
    for written in result.files:
        click.echo(f"  {written.format:16} {written.split or 'all':6} {written.rows:>8} rows  {written.path}")
    click.echo(f"  {'card':16} {'':6} {'':>8}       {result.card_path}")
    for repo, info in result.excluded_repos.items():
        click.echo(f"Excluded {repo}: {info['pairs']} pairs ({info['reason']})")
    if result.redactions:
        click.echo("Secrets redacted: " + ", ".join(f"{k} {v}" for k, v in result.redactions.items()))
    for note in result.notes:
        click.echo(f"Note: {note}")


def _partitions(settings: Settings, store: TableStore, all_partitions: bool) -> tuple[list[str] | None, list[str]]:
    """qa_pairs partitions to export (None = all) and stored ones skipped as no longer listed.

    Like the training_dataset asset (which sees the current "repos" partitions), the export
    covers the repositories of repos.txt; with an empty or unreadable repos.txt, or with
    ``--all-partitions``, every stored partition is used.
    """
    if all_partitions:
        return None, []
    try:
        listed = [entry.key for entry in read_repos_file(settings.repos_file)]
    except (ReposFileError, OSError) as exc:
        logger.warning("repos.txt unreadable (%s); exporting every stored partition", exc)
        return None, []
    if not listed:
        return None, []
    listed_files = {partition_file_name(key) for key in listed}
    skipped = sorted(path.stem for path in store.files("qa_pairs") if path.name not in listed_files)
    return listed, skipped
