"""pytest plugin (registered from tests/conftest.py): the `test_hosts` fixture, real SSH
hosts in network namespaces, each with its own sshd. How the hosts are built, and what
they share with this machine: tests/hostnet.py.

    def test_x(test_hosts):
        test_hosts.hosts            -> [head, worker1, worker2, worker3] (TestHost: .name,
                                       .ip, .netns, .processes(), .run(cmd))
        test_hosts.ssh_user, test_hosts.ssh_private_key, test_hosts.unreachable_ip
        test_hosts.more(12)         -> 12 extra hosts (created on demand, then reused)
        test_hosts.restart_host(host, new_host_key=True)

    def test_y(hosts_run_this_checkout):   # the hosts run corral from this checkout

    def test_z(fresh_hosts):   # four more hosts that look like stock VMs: private empty
                               # home, no checkout, only the distribution's python3, no
                               # corral (checked before every test); a network of their own

The hosts are created once per session (lazily) and reset after every test: pooled SSH
connections closed, every process of each host killed except its sshd, /tmp and /dev/shm
wiped. The session's end (or atexit, as a backstop) tears everything down by PID. Tests
skip with the reason when this machine cannot host them (not root, tools missing).

Scripts outside pytest: `with host_network(4) as network: ...` (re-exported here).
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostnet import (HostNetwork, TestHost, _take_slot, fresh_problem,  # noqa: F401
                           host_network, missing_requirements, open_network)


class TestHosts:
    """What the `test_hosts` fixture yields."""

    __test__ = False

    def __init__(self, network: HostNetwork, base_count: int = 4):
        self.network = network
        self._base_count = base_count

    @property
    def hosts(self) -> list[TestHost]:
        return self.network.all_hosts[:self._base_count]

    ssh_user = property(lambda self: self.network.ssh_user)
    ssh_private_key = property(lambda self: self.network.ssh_private_key)
    unreachable_ip = property(lambda self: self.network.unreachable_ip)

    def more(self, count: int) -> list[TestHost]:
        """`count` hosts beyond the base four (created on first demand, then reused)."""
        have = len(self.network.all_hosts) - self._base_count
        if have < count:
            self.network.add_hosts(count - have)
        return self.network.all_hosts[self._base_count:self._base_count + count]

    def restart_host(self, host: TestHost, new_host_key: bool = False,
                     sshd_options: dict[str, str] | None = None) -> None:
        self.network.restart_host(host, new_host_key=new_host_key, sshd_options=sshd_options)


_SESSION: dict[str, HostNetwork] = {}


def shared_network(fresh: bool = False) -> HostNetwork:
    """This process's shared network with the four base hosts (created once); with
    `fresh`, the other one, whose hosts are stock VMs."""
    key = "fresh" if fresh else "network"
    if key not in _SESSION:
        _SESSION[key] = open_network(4, fresh=fresh)
    return _SESSION[key]


def _network_or_skip(fresh: bool) -> HostNetwork:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    try:
        return shared_network(fresh)
    except subprocess.CalledProcessError as error:
        if "not permitted" in (error.stderr or "") or "denied" in (error.stderr or ""):
            pytest.skip(f"cannot create network namespaces here: {error.stderr.strip()}")
        raise


@pytest.fixture
def test_hosts():
    network = _network_or_skip(fresh=False)
    try:
        yield TestHosts(network)
    finally:
        network.reset_hosts()


@pytest.fixture
def fresh_hosts():
    """Like `test_hosts`, but the hosts look like stock VMs (tests/hostnet.py); each is
    checked to have no corral, no checkout and only the distribution's Python first."""
    network = _network_or_skip(fresh=True)
    try:
        for host in network.hosts[:4]:
            problem = fresh_problem(host)
            assert problem is None, f"{host.name} is not fresh: {problem}"
        yield TestHosts(network)
    finally:
        network.reset_hosts()


CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture
def hosts_run_this_checkout(test_hosts):
    """`test_hosts`, for tests whose hosts run corral itself (this checkout, this
    interpreter). Each host has a private /tmp, so a clone or virtualenv under /tmp is
    invisible there: skip saying so rather than fail with "can't cd"."""
    probe = (f"test -f {shlex.quote(str(CHECKOUT / 'launcher' / '__init__.py'))} && "
             f"test -x {shlex.quote(sys.executable)}")
    if test_hosts.hosts[0].run(probe).returncode != 0:
        pytest.skip(f"the test hosts cannot see this checkout ({CHECKOUT}) or this "
                    f"interpreter ({sys.executable}): each host has a private /tmp; "
                    f"clone and install outside /tmp to run this test")
    return test_hosts


def pytest_sessionfinish(session, exitstatus):
    for key in ("network", "fresh"):
        network = _SESSION.pop(key, None)
        if network is not None:
            network.close()
