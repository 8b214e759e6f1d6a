"""The shared NodeProvider contract: every provider passes the same tests.

A provider joins the suite by adding a module `tests/contract/provider_<type>.py` that
defines a context manager

    contract_provider(tmp_path, cluster_name) -> ContractSetup

which yields a ready provider for `cluster_name` (its backing service started, e.g.
moto's server or the fake GCE API) and tears everything down on exit, even on failure.
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Mapping

import pytest

from launcher.providers.base import NodeProvider

HERE = Path(__file__).parent
PROVIDER_MODULES = sorted(path.stem for path in HERE.glob("provider_*.py"))


@dataclasses.dataclass
class ContractSetup:
    provider: NodeProvider
    node_type: str
    node_config: Mapping[str, Any]
    # A second provider of the same backend for another cluster, to check isolation.
    other_cluster_provider: NodeProvider
    runs_commands: bool = True  # command_runner(node).run works in this test setting
    settle_timeout_s: float = 30.0  # how long listings may take to reflect a change


@pytest.fixture(params=PROVIDER_MODULES, ids=[name[len("provider_"):] for name in PROVIDER_MODULES])
def contract(request, tmp_path):
    module = importlib.import_module(f"tests.contract.{request.param}")
    with module.contract_provider(tmp_path, "contract-a") as setup:
        yield setup
