"""Run orchestration behind ``cicdllm run`` and ``cicdllm backfill``.

- :mod:`.instance`: the Dagster instance at ``settings.dagster_home`` (created if needed).
- :mod:`.selection`: asset selection strings split into the per-repo chain and the dataset step.
- :mod:`.pipeline`: one in-process run per repo partition, then the dataset step, with outcomes.
- :mod:`.progress`: live progress from the SQLite state store while runs execute.
- :mod:`.backfill`: partition backfills through a running webserver's GraphQL API.
"""
