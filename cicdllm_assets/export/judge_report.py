"""The dataset card's judge section: score histograms of the judged pairs (a PNG and Markdown).

Counts come from the qa_pairs input (every pair the judge scored, kept or rejected as
``judge_low``) and from the exported pairs; the figure is ``plots/judge_scores.png``
(matplotlib, Agg), linked from the card; the same counts are a Markdown table for
Dagster metadata.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
from matplotlib.figure import Figure

from cicdllm_assets.generation.judge import CRITERIA, JUDGE_LOW, JUDGE_UNSCORED, histogram_markdown, mean_score

PLOTS_DIR = "plots"
JUDGE_FIGURE = "judge_scores.png"


@dataclass
class JudgeReport:
    """Judge scores over the input pairs the judge scored, and how many of them were exported."""

    scored: int = 0
    exported_scored: int = 0
    models: list[str] = field(default_factory=list)
    histogram: dict[str, list[int]] = field(default_factory=lambda: {c: [0] * 5 for c in CRITERIA})
    plot_path: Path | None = None

    def mean(self, criterion: str) -> float:
        """Mean score of one criterion (0 when nothing was scored)."""
        return mean_score(self.histogram[criterion])


def judge_report(con: duckdb.DuckDBPyConnection, source: str, exported: str) -> JudgeReport:
    """Score counts of the scored pairs in ``source`` and the scored count in ``exported`` (tables/views)."""
    report = JudgeReport()
    # table names are ours; the criteria are constants
    for criterion in CRITERIA:
        column = f"judge_{criterion}"
        sql = f"SELECT {column}, count(*) FROM {source} WHERE {column} IS NOT NULL GROUP BY 1"  # noqa: S608
        for score, count in con.execute(sql).fetchall():
            if 1 <= int(score) <= 5:
                report.histogram[criterion][int(score) - 1] += int(count)
    report.scored = sum(report.histogram[CRITERIA[0]])
    where = "judge_correctness IS NOT NULL"
    report.exported_scored = int(con.execute(f"SELECT count(*) FROM {exported} WHERE {where}").fetchone()[0])  # type: ignore[index]  # noqa: S608
    models = con.execute(f"SELECT DISTINCT judge_model FROM {source} WHERE {where} ORDER BY 1").fetchall()  # noqa: S608
    report.models = [str(m) for (m,) in models if m]
    return report


def judge_png(report: JudgeReport) -> bytes:
    """Grouped bars: pairs per score (1-5) for each criterion."""
    figure = Figure(figsize=(7, 3.5), dpi=100)
    ax = figure.subplots()
    width = 0.8 / len(CRITERIA)
    for i, criterion in enumerate(CRITERIA):
        ax.bar([s + (i - 1) * width for s in range(1, 6)], report.histogram[criterion], width, label=criterion)
    ax.set_xticks(range(1, 6))
    ax.set_xlabel("judge score")
    ax.set_ylabel("pairs")
    ax.set_title(f"Judge scores ({report.scored} pairs scored)")
    ax.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_judge_plot(report: JudgeReport, target: Path) -> Path:
    """Write ``target/plots/judge_scores.png`` atomically; return its path."""
    path = target / PLOTS_DIR / JUDGE_FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(judge_png(report))
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def judge_markdown(report: JudgeReport | None, rejections: dict[str, int], threshold: int, enabled: bool) -> str:
    """The card's judge section body."""
    if report is None or report.scored == 0:
        state = "enabled" if enabled else "off (`quality.judge.enabled: false`)"
        return f"No pair carries judge scores (the judge is {state}).\n"
    means = ", ".join(f"{c} {report.mean(c):.2f}" for c in CRITERIA)
    lines = [
        f"{report.scored} pairs were scored 1-5 by {', '.join(f'`{m}`' for m in report.models)} "
        f"(correctness against the code, groundedness, usefulness; mean: {means}). "
        f"A pair is kept when each score is at least {threshold}: {rejections.get(JUDGE_LOW, 0)} rejected as "
        f"`{JUDGE_LOW}`, {rejections.get(JUDGE_UNSCORED, 0)} as `{JUDGE_UNSCORED}` (no parseable verdict); "
        f"{report.exported_scored} scored pairs are in the export (columns `judge_correctness`, "
        "`judge_groundedness`, `judge_usefulness`, `judge_rationale`, `judge_model`).",
        "",
        histogram_markdown(report.histogram),
        "",
    ]
    if report.plot_path is not None:
        lines += [f"![Judge scores]({PLOTS_DIR}/{report.plot_path.name})", ""]
    return "\n".join(lines)
