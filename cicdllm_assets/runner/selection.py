"""Asset selection strings (Dagster's syntax) split into the per-repo chain and the dataset step."""

from __future__ import annotations

from dataclasses import dataclass

from dagster import AssetKey, AssetSelection, Definitions

from cicdllm_assets.automation.evaluation_jobs import EVALUATION_ASSETS
from cicdllm_assets.automation.jobs import PIPELINE_SELECTION
from cicdllm_assets.errors import CicdllmError


class SelectionError(CicdllmError, ValueError):
    """A selection string that does not parse or selects nothing runnable."""


@dataclass(frozen=True)
class PlannedSelection:
    """What to run: per-repo keys (in ``main_job``) and dataset keys (in ``dataset_job``)."""

    text: str
    repo_keys: tuple[AssetKey, ...]
    dataset_keys: tuple[AssetKey, ...]

    @property
    def names(self) -> list[str]:
        """Every selected asset as a user string, chain first."""
        return [key.to_user_string() for key in (*self.repo_keys, *self.dataset_keys)]


def _job_keys(defs: Definitions, job_name: str) -> set[AssetKey]:
    job = defs.resolve_job_def(job_name)
    return set(job.asset_layer.executable_asset_keys)


def parse_selection(text: str) -> AssetSelection:
    """Dagster's selection syntax, or the comma form of ``dagster asset materialize --select``
    (``repositories,source_files+``: each clause parsed on its own, the union selected)."""
    try:
        return AssetSelection.from_string(text)
    except Exception:
        clauses = [clause.strip() for clause in text.split(",")]
        if len(clauses) < 2 or not all(clauses):
            raise
    selection = AssetSelection.from_string(clauses[0])
    for clause in clauses[1:]:
        selection = selection | AssetSelection.from_string(clause)
    return selection


def plan_selection(defs: Definitions, text: str | None, main_job: str, dataset_job: str) -> PlannedSelection:
    """Resolve ``text`` (default: every pipeline asset) against ``defs``.

    Raises :class:`SelectionError` for a string Dagster cannot parse, a selection that is
    empty, or assets that belong to neither job.
    """
    source = text.strip() if text and text.strip() else PIPELINE_SELECTION
    graph = defs.resolve_asset_graph()
    try:
        selected = parse_selection(source).resolve(graph)
    except Exception as exc:  # dagster raises several error types for bad selections
        raise SelectionError(f"invalid asset selection {source!r}: {exc}") from exc
    if not selected:
        known = ", ".join(sorted(k.to_user_string() for k in graph.get_all_asset_keys()))
        raise SelectionError(f"asset selection {source!r} matches no asset (assets: {known or 'none'})")
    repo_job_keys = _job_keys(defs, main_job)
    dataset_job_keys = _job_keys(defs, dataset_job)
    # A downstream selection (``repositories+``) reaches the opt-in evaluation assets, which
    # only ``cicdllm finetune`` / ``cicdllm eval`` run: they are left out, not an error.
    opt_in = {AssetKey(name) for name in EVALUATION_ASSETS}
    if selected - opt_in:
        selected = selected - opt_in
    outside = sorted(k.to_user_string() for k in selected - repo_job_keys - dataset_job_keys)
    if outside:
        raise SelectionError(f"asset selection {source!r} includes assets outside the pipeline jobs: {outside}")
    order = {key: i for i, key in enumerate(graph.toposorted_asset_keys)}
    repo_keys = tuple(sorted(selected & repo_job_keys, key=lambda k: order.get(k, 0)))
    dataset_keys = tuple(sorted(selected & dataset_job_keys, key=lambda k: order.get(k, 0)))
    return PlannedSelection(text=source, repo_keys=repo_keys, dataset_keys=dataset_keys)
