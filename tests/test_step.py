"""The asset step template (assets/_step.py) on a real project state store: failures recorded
one way, the store closed, permanent errors skipping the retry policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import Failure, build_asset_context

from cicdllm_assets.assets._step import ALL, asset_step
from cicdllm_assets.chunking.runtime import TokenizerUnavailableError
from cicdllm_assets.config import ConfigError, Settings
from cicdllm_assets.resources.config_resource import AppConfigResource
from cicdllm_assets.sources.git import GitError
from cicdllm_assets.storage.state import StateStore

STAGE = "demo"


def _failures(settings: Settings) -> list[tuple[str, str, str, str]]:
    with StateStore(settings.state_target) as state:
        rows = state.query("SELECT repo, stage, item, category FROM failures ORDER BY id")
    return [(r["repo"], r["stage"], r["item"], r["category"]) for r in rows]


def _status(settings: Settings, repo: str) -> str:
    with StateStore(settings.state_target) as state:
        return next(p.status for p in state.progress(repo) if p.stage == STAGE)


def test_a_domain_error_is_recorded_with_its_category_and_fails_without_retries(settings: Settings) -> None:
    context = build_asset_context(partition_key="acme")
    with pytest.raises(Failure) as raised, asset_step(context, AppConfigResource(), STAGE) as step:
        step.state.start_stage(step.repo, STAGE, 1)
        raise TokenizerUnavailableError("no tokenizer.json at /nowhere")
    assert raised.value.allow_retries is False
    assert raised.value.description == "no tokenizer.json at /nowhere"
    assert _failures(settings) == [("acme", STAGE, "acme", "tokenizer")]
    assert _status(settings, "acme") == "failed"
    assert step.state._open == []


def test_a_transient_domain_error_keeps_the_retry_policy(settings: Settings) -> None:
    with (
        pytest.raises(Failure) as raised,
        asset_step(build_asset_context(partition_key="acme"), AppConfigResource(), STAGE) as step,
    ):
        step.state.start_stage(step.repo, STAGE, 1)
        raise GitError("fetch timed out")
    assert raised.value.allow_retries is True
    assert _failures(settings) == [("acme", STAGE, "acme", "git")]


def test_an_unexpected_error_is_recorded_as_internal_and_re_raised(settings: Settings) -> None:
    with (
        pytest.raises(KeyError),
        asset_step(build_asset_context(), AppConfigResource(), STAGE, partitioned=False) as step,
    ):
        step.state.start_stage(ALL, STAGE, 1)
        raise KeyError("missing")
    assert _failures(settings) == [(ALL, STAGE, ALL, "internal")]
    assert _status(settings, ALL) == "failed"


def test_an_invalid_config_fails_at_once(project: Path) -> None:
    (project / "cicdllm.yaml").write_text("generation:\n  batch_size: -1\n", encoding="utf-8")
    with (
        pytest.raises(Failure) as raised,
        asset_step(build_asset_context(partition_key="acme"), AppConfigResource(), STAGE),
    ):
        pytest.fail("the body must not run")
    assert raised.value.allow_retries is False
    assert "generation.batch_size" in (raised.value.description or "")
    assert raised.value.metadata["category"].value == ConfigError.category
