"""PROTOCOL_VERSION checked at registration, with real processes: a driver or node agent
that speaks another version (here: this corral with its version patched, as a peer of
another release would be) is refused by the control service with ProtocolVersionError
naming both versions; the driver raises it from init, the agent exits with it in its
log; a registration that says no version is version 1 and refused too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.control.client import ControlClient
from runtime.node import session
from runtime.protocol.version import PROTOCOL_VERSION, ProtocolVersionError

pytestmark = pytest.mark.timeout(120)
REPO = str(Path(__file__).resolve().parents[2])
OTHER_VERSION = PROTOCOL_VERSION + 7

DRIVER = """
import sys
import runtime
from runtime.protocol import version
version.PROTOCOL_VERSION = {other}
try:
    runtime.init(address={address!r}, keys_dir={keys_dir!r})
except version.ProtocolVersionError as error:
    print("REFUSED", error.ours, error.theirs, error)
    sys.exit(3)
print("ADMITTED")
"""

AGENT = """
import sys
from runtime.protocol import version
version.PROTOCOL_VERSION = {other}
from runtime.agent.main import main
main(sys.argv[1:])
"""


def _run(script: str, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=REPO)


def test_a_driver_of_another_version_is_refused_at_init(local_cluster):
    head = local_cluster.start_head(num_cpus=1)
    out = _run(DRIVER.format(other=OTHER_VERSION, address=head.address,
                             keys_dir=str(local_cluster.keys_dir)))
    assert out.returncode == 3, out.stdout + out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith(f"REFUSED {OTHER_VERSION} {PROTOCOL_VERSION} ")
    assert f"version {OTHER_VERSION}" in line and f"version {PROTOCOL_VERSION}" in line
    assert head.address in line                           # names the refusing service
    control_log = (head.session / "logs" / "control.log").read_text()
    assert f"speaks corral protocol version {OTHER_VERSION}" in control_log
    # the refused driver left nothing behind: a driver of this version is admitted
    local_cluster.connect()


def test_a_node_agent_of_another_version_exits_with_the_reason_in_its_log(
        local_cluster, tmp_path):
    head = local_cluster.start_head(num_cpus=1)
    node_session = tmp_path / "other" / "session"
    node_session.mkdir(parents=True, mode=0o700)
    out = _run(AGENT.format(other=OTHER_VERSION), "--control", head.address,
               "--head-address", head.address, "--node-id", "other",
               "--resources", json.dumps({"CPU": 1.0}),
               "--keys-dir", str(local_cluster.keys_dir), "--session", str(node_session),
               "--node-ip", "127.0.0.1")
    assert out.returncode not in (0, None), out.stderr
    refusal = [line for line in out.stderr.splitlines()
               if "the control service refused this node" in line]
    assert refusal, out.stderr
    assert f"version {PROTOCOL_VERSION}" in refusal[0] and \
        f"version {OTHER_VERSION}" in refusal[0]
    assert f"node agent not started: " in out.stderr.splitlines()[-1]
    with ControlClient(head.address, str(local_cluster.keys_dir)) as client:
        assert [node["node_id"] for node in client.call("nodes")] == ["head"]


@pytest.mark.parametrize("method, kwargs", [
    ("register_driver", {"driver_id": "old"}),
    ("register_node", {"node_id": "old", "node_type": None, "address": "127.0.0.1:1",
                       "ipc": None, "hostname": "h", "resources_total": {"CPU": 1.0}})])
def test_a_registration_without_a_version_is_version_1_and_refused(local_cluster, method,
                                                                    kwargs):
    head = local_cluster.start_head(num_cpus=1)
    with ControlClient(head.address, str(local_cluster.keys_dir)) as client:
        with pytest.raises(ProtocolVersionError) as refused:
            client.call(method, **kwargs)
        assert (refused.value.ours, refused.value.theirs) == (1, PROTOCOL_VERSION)
        assert "version 1" in str(refused.value) and \
            f"version {PROTOCOL_VERSION}" in str(refused.value)
        assert [node["node_id"] for node in client.call("nodes")] == ["head"]
        # the same call saying this version is admitted
        client.call(method, protocol_version=PROTOCOL_VERSION, **kwargs)
    assert session.is_alive(head.pids["control"])
