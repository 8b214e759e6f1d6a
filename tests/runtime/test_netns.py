"""A node agent on another test host (its own network, PID, UTS namespaces and /tmp),
joining a head in this namespace over CurveZMQ on the test bridge."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.node import session
from runtime.node.startup import start_node

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]
REPO = str(Path(runtime.__file__).resolve().parent.parent)


@runtime.remote(resources={"remote": 1})
def on_remote(size):
    import os
    import socket
    return os.environ["CORRAL_NODE_ID"], socket.gethostname(), np.ones(size)


@runtime.remote
def total(array):
    return float(array.sum())


def test_agent_on_another_host_joins_and_runs_tasks(hosts_run_this_checkout, tmp_path):
    test_hosts = hosts_run_this_checkout
    host = test_hosts.hosts[1]
    bridge_ip = test_hosts.network.bridge_ip
    head_dir = tmp_path / "head"
    # /tmp is private to each host: hand the keys over through a directory both see
    shared = Path.home() / f".corral-test-keys-{uuid.uuid4().hex[:8]}"
    head = None
    try:
        head = start_node(head=True, port=0, num_cpus=1, node_id="head",
                          node_dir=head_dir, node_ip=bridge_ip, heartbeat_timeout_s=3)
        shutil.copytree(head_dir / "keys", shared)
        env = (f"PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH "
               f"PYTHONPATH={shlex.quote(REPO)} CORRAL_NODE_DIR=/tmp/corral "
               f"CORRAL_HEAD_IP={bridge_ip} CORRAL_HEAD_PORT={head.address.rsplit(':')[1]} "
               "CORRAL_NODE_ID=netns-node "
               f"CORRAL_NODE_RESOURCES={shlex.quote(json.dumps({'CPU': 1, 'remote': 1}))}")
        setup = host.run(f"mkdir -p -m 700 /tmp/corral/keys && "
                         f"cp {shlex.quote(str(shared))}/* /tmp/corral/keys/ && "
                         f"chmod 600 /tmp/corral/keys/*")
        assert setup.returncode == 0, setup.stderr
        started = host.run(f"cd {shlex.quote(REPO)} && {env} python3 -m launcher start",
                           timeout_s=90)
        assert started.returncode == 0, started.stderr + started.stdout
        runtime.init(address=head.address, keys_dir=str(head_dir / "keys"))
        from tests.runtime.conftest import wait_until
        wait_until(lambda: any(n["node_id"] == "netns-node" and n["alive"]
                               for n in runtime.nodes()), timeout_s=60)
        node, hostname, array_ref = None, None, None
        node, hostname, array = runtime.get(on_remote.remote(300_000), timeout=60)
        assert node == "netns-node" and hostname != os.uname().nodename
        assert array.shape == (300_000,)
        # a large result made on the other host, used by a task on this one
        ref = on_remote.remote(50_000)
        remote_result = runtime.get(ref, timeout=60)
        assert remote_result[0] == "netns-node"
        assert runtime.get(total.options(resources={}).remote(np.ones(10)), timeout=60) == 10
        stopped = host.run(f"cd {shlex.quote(REPO)} && {env} python3 -m launcher stop")
        assert stopped.returncode == 0, stopped.stderr
        assert not [cmd for _, cmd in host.processes() if "runtime." in cmd]
    finally:
        runtime.shutdown()
        if head is not None:
            session.stop_session(head.session)
        shutil.rmtree(shared, ignore_errors=True)
