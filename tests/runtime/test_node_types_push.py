"""The node types reach the control service from the autoscaler monitor (real processes:
a head started with --autoscaling-config runs both), not from the control service
reading the cluster YAML: at the monitor's start, and again after the control service
started afresh (its saved state gone)."""
from __future__ import annotations

import os
import signal

import pytest
import yaml

import runtime
from runtime import state
from runtime.protocol.load import NodeType
from tests.runtime.conftest import wait_until

pytestmark = pytest.mark.timeout(150)


@runtime.remote
def noop():
    return None


def _write_config(path) -> None:
    # max_workers 0: the monitor may plan with these types but launches nothing
    path.write_text(yaml.safe_dump({
        "cluster_name": "pushed", "max_workers": 0, "idle_timeout_minutes": 1,
        "provider": {"type": "process"},
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 0},
            "gpu8": {"resources": {"CPU": 4, "GPU": 8}, "min_workers": 0,
                     "max_workers": 0}},
        "head_node_type": "head"}))


def test_the_monitor_pushes_the_node_types_at_start_and_after_a_fresh_control(
        local_cluster, tmp_path):
    config = tmp_path / "cluster.yaml"
    _write_config(config)
    head = local_cluster.start_head(num_cpus=1, autoscaling_config=str(config))
    assert head.monitor == "started"
    keys_dir = str(local_cluster.keys_dir)

    def types():
        report = state.load_report(head.address, keys_dir)
        return dict(report.node_types) or None
    assert wait_until(types, timeout_s=60) == {"gpu8": NodeType({"CPU": 4.0, "GPU": 8.0}, 0)}

    local_cluster.connect()
    fits_a_type = noop.options(num_gpus=4).remote()
    fits_nothing = noop.options(num_gpus=16).remote()
    infeasible = wait_until(lambda: (lambda shapes: shapes if len(shapes) == 1 and any(
        d["shape"].get("GPU") == 4.0 for d in state.get_load()["pending_demand"])
        else None)(state.get_load()["infeasible"]))
    assert infeasible == [{"CPU": 1.0, "GPU": 16.0}]
    del fits_a_type, fits_nothing

    # the control service starts afresh (no saved state): the monitor tells it again
    (head.session / "control.state.json").unlink()
    os.kill(head.pids["control"], signal.SIGKILL)
    wait_until(lambda: "resuming empty" in
               (head.session / "logs" / "control.log").read_text(), timeout_s=60)
    assert wait_until(types, timeout_s=60) == {"gpu8": NodeType({"CPU": 4.0, "GPU": 8.0}, 0)}
