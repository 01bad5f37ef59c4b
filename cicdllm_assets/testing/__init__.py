"""Test and benchmark helpers that ship with the package (fault-injecting model server)."""

from cicdllm_assets.testing.fault_server import (
    Fault,
    FaultServer,
    FaultServerProcess,
    RequestRecord,
    default_responder,
)

__all__ = ["Fault", "FaultServer", "FaultServerProcess", "RequestRecord", "default_responder"]
