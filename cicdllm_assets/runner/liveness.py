"""Is the ``cicdllm`` process that started a Dagster run still alive? (No Dagster import.)

``cicdllm run`` tags each run with its pid and host; a run still ``STARTED`` whose process is
gone on this host died with it (``kill -9``, a crash). The next ``cicdllm run`` marks such runs
failed; until then the status viewer shows them as ``DEAD``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import psutil

TRIGGER_TAG = "cicdllm/trigger"
PID_TAG = "cicdllm/pid"
HOST_TAG = "cicdllm/host"
DEAD_STATUS = "DEAD"
"""What the viewer shows for a run still recorded as live whose process is gone."""


def dead_process(tags: Mapping[str, str]) -> int | None:
    """The pid of the CLI process that ran a run with these tags, if it is gone; else None.

    None too when the run was not started by ``cicdllm run`` on this host (nothing to check).
    """
    pid_text = tags.get(PID_TAG, "")
    if tags.get(TRIGGER_TAG) != "cli" or tags.get(HOST_TAG) != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    if pid == os.getpid() or psutil.pid_exists(pid):
        return None
    return pid
