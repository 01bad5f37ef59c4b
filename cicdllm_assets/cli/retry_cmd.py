"""``cicdllm retry-failed``: give generation items that ran out of attempts another try.

Items fail for good after ``generation.max_attempts`` failures of their own (unparseable or
empty output, ...); outages never use attempts. This resets the attempts of failed items
(optionally of one failure category and/or repo) so the next ``cicdllm run`` sends them again.
Exit codes: 0 done (also when nothing matched), 2 bad config.
"""

from __future__ import annotations

import json

import click

from cicdllm_assets.cli.common import load_settings_or_exit
from cicdllm_assets.generation.ledger import Ledger
from cicdllm_assets.storage.state import open_existing_state


@click.command(name="retry-failed")
@click.option("--category", default=None, metavar="C", help="Only items whose last failure has this category.")
@click.option("--repo", default=None, metavar="R", help="Only items of this repo partition key.")
@click.option("--json", "as_json", is_flag=True, help="Print the count as JSON.")
def command(category: str | None, repo: str | None, as_json: bool) -> None:
    """Reset the attempts of failed generation items so the next `cicdllm run` retries them."""
    settings = load_settings_or_exit()
    reset = 0
    state = open_existing_state(settings.state_target)
    if state is not None:
        with state:
            reset = Ledger(state).reset_failed(repo=repo, category=category)
    if as_json:
        click.echo(json.dumps({"reset": reset, "category": category, "repo": repo}))
        return
    scope = " ".join(part for part in (category and f"category {category}", repo and f"repo {repo}") if part)
    click.echo(f"reset {reset} failed item(s){' of ' + scope if scope else ''}; `cicdllm run` retries them")
