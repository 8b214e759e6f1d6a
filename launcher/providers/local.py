"""The `local` provider: on-prem hosts listed in the config, reached over SSH.

    provider: {type: local, head_ip: 10.0.0.1, worker_ips: [10.0.0.2, 10.0.0.3]}

A node is a host; its id is the host's address. Which hosts are in use, and by which
cluster, is known from ONE place only: the tag file on each host (launcher/providers/
host_tags.py), read over SSH by whoever asks — the laptop and the head see the same
truth, so `corral down` from either frees every host (unlike ray-project/ray#43232).

Terminating a node stops every runtime process of ours on the host (`corral stop`, then
every process tagged CORRAL_NODE_DIR=/tmp/corral or recorded in its pid files, by PID),
removes /tmp/corral and deletes the tag file, which frees the host.

Round trips (each an SSH command on a pooled connection): listing = one per host, in
parallel; claiming a free host = one; a tag write = one; terminating = three (read, stop,
release). A host that does not answer is recorded in `unreachable` (data for `up`,
`status`, `down` to report), not logged here, so users see it once.

Limits: a host removed from the config while claimed is no longer looked at; run `corral
down` before removing hosts. A host without `flock` is claimed without the host-side
lock (the compare-and-swap still catches most races).
"""
from __future__ import annotations

import logging
import shlex
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

from launcher import tags as T
from launcher.errors import (CapacityError, ClusterError, NodeNotFoundError,
                             PartialTerminateError, ProviderError, SSHConfigError,
                             SSHKeyError, SSHUnreachableError, UsageError)
from launcher.providers import host_tags, node_processes
from launcher.providers.base import (STATE_RUNNING, Capability, Node, NodeId, NodeProvider,
                                     matches)

log = logging.getLogger(__name__)

REMOTE_NODE_DIR = "/tmp/corral"  # CORRAL_NODE_DIR on SSH hosts (common contract)
TAG_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
MAX_PARALLEL = 32
CLAIMED = "claimed"
TAKEN = "taken"  # another cluster (or launcher) holds the host


class LocalProvider(NodeProvider):
    """Claims on-prem hosts for one cluster through tag files on the hosts themselves."""

    capabilities = frozenset({Capability.UNREACHABLE})

    def __init__(self, config):
        super().__init__(config)
        provider = config.provider
        self.head_ip: str = provider["head_ip"]
        self.worker_ips: list[str] = [ip for ip in dict.fromkeys(provider.get("worker_ips", ()))
                                      if ip != self.head_ip]
        self.state_dir: str = provider.get("state_dir") or host_tags.DEFAULT_STATE_DIR
        self.node_dir: str = REMOTE_NODE_DIR
        self._runners: dict[str, object] = {}
        self._runners_lock = threading.Lock()
        # Hosts that did not answer the last listing, {ip: error text}: `status`/`down`
        # report them instead of pretending they are free or gone.
        self.unreachable: dict[str, str] = {}
        # What this provider last read from or wrote to each host's tag file: lets a tag
        # write take its shell fast path (see host_tags.update_command). Only a hint: the
        # host checks it under its lock and merges itself when it is stale.
        self._known: dict[str, host_tags.HostTags] = {}
        self._known_lock = threading.Lock()

    # -- SSH -------------------------------------------------------------------------------
    def _new_runner(self, ip: str, base_env: Mapping[str, str] | None = None):
        """`ip` as the user wrote it (an address or a ~/.ssh/config alias); what auth leaves
        unset (user, key) comes from ~/.ssh/config, ssh-agent and ssh's defaults."""
        from launcher.ssh.runner import SSHRunner
        auth = self.config.auth
        return SSHRunner(ip, user=auth.ssh_user, private_key_path=auth.ssh_private_key,
                         cluster_name=self.cluster_name, proxy_command=auth.ssh_proxy_command,
                         timeout_s=auth.ssh_timeout_s, base_env=base_env)

    def _runner(self, ip: str):
        """The provider's own runner for tag reads and writes (pooled, reused)."""
        with self._runners_lock:
            if ip not in self._runners:
                self._runners[ip] = self._new_runner(ip)
            return self._runners[ip]

    def _all_ips(self) -> list[str]:
        return [self.head_ip, *self.worker_ips]

    def _read_many(self, ips: list[str]) -> dict[str, host_tags.HostTags | ClusterError]:
        """Every host's tag file, read in parallel; an unreachable host maps to its error."""
        def one(ip):
            try:
                tags = host_tags.read(self._runner(ip), self.state_dir, TAG_TIMEOUT_S)
                self._remember(ip, tags)
                return ip, tags
            except (SSHKeyError, SSHConfigError):
                raise  # the user's SSH set-up, not the host: say so rather than "unreachable"
            except (ClusterError, OSError, socket.error) as error:
                return ip, error if isinstance(error, ClusterError) else \
                    ProviderError(f"{ip}: {error}", cause=type(error).__name__)
        return dict(_parallel(one, ips))

    def _remember(self, ip: str, tags: host_tags.HostTags | None) -> None:
        with self._known_lock:
            if tags is None:
                self._known.pop(ip, None)
            else:
                self._known[ip] = tags

    # -- NodeProvider ----------------------------------------------------------------------
    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        nodes, unreachable = [], {}
        for ip, tags in self._read_many(self._all_ips()).items():
            if isinstance(tags, ClusterError):
                unreachable[ip] = str(tags)  # reported by the callers, not logged here
                continue
            if tags.belongs_to(self.cluster_name):
                node = self._node(ip, tags)
                if matches(node.tags, tag_filters):
                    nodes.append(node)
        self.unreachable = unreachable
        nodes.sort(key=lambda node: (node.kind != T.KIND_HEAD, self._all_ips().index(node.id)))
        return nodes

    def _node(self, ip: str, tags: host_tags.HostTags) -> Node:
        claim = tags.claim
        kind = claim.get("kind") or (T.KIND_HEAD if ip == self.head_ip else T.KIND_WORKER)
        node_type = str(claim.get("node_type") or "")
        node_tags = {**tags.tags, T.TAG_CLUSTER_NAME: self.cluster_name,
                     T.TAG_NODE_KIND: kind, T.TAG_NODE_TYPE: node_type}
        # A ~/.ssh/config alias is only a name on this machine: the nodes (the workers
        # reaching the head) get the address it stands for.
        address = self._runner(ip).spec.host
        return Node(id=ip, kind=kind, node_type=node_type, state=STATE_RUNNING,
                    internal_ip=address, external_ip=ip, tags=node_tags)

    def create_nodes(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
                     count: int) -> list[NodeId]:
        kind = tags.get(T.TAG_NODE_KIND, T.KIND_WORKER)
        if kind not in (T.KIND_HEAD, T.KIND_WORKER):
            raise UsageError(f"unknown node kind {kind!r} in tags")
        if count <= 0:
            return []
        pool = [self.head_ip] if kind == T.KIND_HEAD else list(self.worker_ips)
        what = "the head IP" if kind == T.KIND_HEAD else f"{len(pool)} worker IPs"
        node_tags = {**{key: str(value) for key, value in tags.items()},
                     T.TAG_CLUSTER_NAME: self.cluster_name, T.TAG_NODE_KIND: kind,
                     T.TAG_NODE_TYPE: node_type}
        claim = host_tags.make_claim(self.cluster_name, kind, node_type, node_tags,
                                     claimed_by=socket.gethostname())
        # First claim optimistically, in config order (so racing launchers meet on the
        # same hosts and one of them wins each): trying to claim costs one command, as
        # much as reading, and a taken host tells us so. `up` usually finds them all free.
        # If that falls short, read the rest at once and go on with the free ones only,
        # rather than walking a mostly-taken pool one round trip at a time.
        claimed: list[str] = []
        unreachable: list[str] = []
        failures: dict[str, str] = {}
        candidates = list(pool)
        first_round = True
        while len(claimed) < count and candidates:
            if not first_round and len(candidates) > count - len(claimed):
                read = self._read_many(candidates)
                unreachable += [ip for ip in candidates if isinstance(read[ip], ClusterError)]
                candidates = [ip for ip in candidates if not isinstance(read[ip], ClusterError)
                              and read[ip].is_free()]
            first_round = False
            need = count - len(claimed)
            batch, candidates = candidates[:need], candidates[need:]
            for ip, outcome in _parallel(lambda ip: self._try_claim(ip, claim), batch):
                if outcome == CLAIMED:
                    claimed.append(ip)
                elif isinstance(outcome, SSHUnreachableError):
                    unreachable.append(ip)
                elif outcome != TAKEN:
                    failures[ip] = str(outcome)
        if len(claimed) < count:  # give back what we took: all or nothing
            self._release(claimed)
            if failures:
                raise ProviderError(f"could not claim {len(failures)} host(s) for "
                                    f"{node_type}: " + "; ".join(
                                        f"{ip}: {why}" for ip, why in failures.items()),
                                    node_type=node_type)
            raise self._capacity_error(node_type, kind, what, pool, claimed, unreachable,
                                       count)
        return claimed

    def _try_claim(self, ip: str, claim: dict) -> tuple[str, object]:
        """(ip, CLAIMED), (ip, TAKEN) when the host is someone else's (or another
        launcher was first), (ip, SSHUnreachableError) when it does not answer, or
        (ip, error) when the host refused or failed."""
        try:
            taken = host_tags.claim(self._runner(ip), self.state_dir, claim, TAG_TIMEOUT_S)
        except SSHUnreachableError as error:
            return ip, error
        except (OSError, socket.error) as error:
            return ip, SSHUnreachableError(ip, TAG_TIMEOUT_S, str(error))
        except ClusterError as error:
            return ip, error
        self._remember(ip, host_tags.HostTags(host_tags.encode(claim), claim)
                       if taken is None else taken)
        return ip, CLAIMED if taken is None else TAKEN

    def _release(self, ips: list[str]) -> None:
        for ip, error in _parallel(self._release_one, ips):
            if error is not None:  # still ours: `down` or a later terminate frees it
                log.warning("could not give back host %s: %s", ip, error)

    def _release_one(self, ip: str) -> tuple[str, ClusterError | None]:
        try:
            host_tags.update_claim(self._runner(ip), self.state_dir, self.cluster_name, None,
                                   TAG_TIMEOUT_S)
        except ClusterError as error:
            return ip, error
        finally:
            self._remember(ip, None)
        return ip, None

    @staticmethod
    def _capacity_error(node_type, kind, what, pool, free, unreachable, count) -> CapacityError:
        if not pool:
            message = f"no {'head' if kind == T.KIND_HEAD else 'worker'} IPs in provider config"
        elif not free:
            message = f"all {what} are in use"
        else:
            message = f"only {len(free)} of {what} are free; {count} asked for"
        if unreachable:
            message += f" ({len(unreachable)} unreachable: {', '.join(unreachable)})"
        return CapacityError(message, node_type=node_type, free_count=len(free),
                             requested_count=count, unreachable_ips=unreachable)

    def set_node_tags(self, node_id: NodeId, tags: Mapping[str, str]) -> None:
        """One command on the host: the merge happens there, under the host's lock."""
        if node_id not in self._all_ips():
            raise NodeNotFoundError(f"{node_id} is not a host of cluster {self.cluster_name!r}")
        with self._known_lock:
            known = self._known.get(node_id)
        new = host_tags.update_claim(self._runner(node_id), self.state_dir, self.cluster_name,
                                     tags, TAG_TIMEOUT_S, known=known)
        self._remember(node_id, new)
        if new is None:
            raise NodeNotFoundError(f"host {node_id} is not a node of cluster "
                                    f"{self.cluster_name!r}")

    def known_node(self, node_id: NodeId) -> Node | None:
        """From the tag file this provider last read or wrote on the host (a claim it just
        made, say): a host's IP is its node id, so `up` need not list every host again."""
        with self._known_lock:
            tags = self._known.get(node_id)
        if tags is None or not tags.belongs_to(self.cluster_name):
            return None
        return self._node(node_id, tags)

    def terminate_nodes(self, ids: list[NodeId]) -> None:
        known = [ip for ip in dict.fromkeys(ids) if ip in self._all_ips()]
        failures = {ip: error for ip, error in _parallel(self._terminate_one, known) if error}
        if failures:
            raise PartialTerminateError("could not terminate", failures)

    def _terminate_one(self, ip: str) -> tuple[str, str | None]:
        try:
            runner = self._runner(ip)
            tags = host_tags.read(runner, self.state_dir, TAG_TIMEOUT_S)
            if not tags.belongs_to(self.cluster_name):
                return ip, None  # not ours (or already free): nothing to do
            result = runner.run(stop_script(self.node_dir, STOP_GRACE_S),
                                timeout_s=STOP_TIMEOUT_S)
            if not result.ok:
                return ip, f"stopping processes failed (exit {result.exit_code}): " \
                           f"{result.tail(5)}"
            if result.stderr.strip():  # e.g. no Python with psutil: nothing searched
                log.warning("%s: %s", ip, result.stderr.strip())
            host_tags.update_claim(runner, self.state_dir, self.cluster_name, None,
                                   TAG_TIMEOUT_S)
            self._remember(ip, None)
            return ip, None
        except ClusterError as error:
            return ip, str(error)

    def command_runner(self, node: Node):
        """An SSHRunner for the host. Every command it runs carries CORRAL_NODE_DIR (and the
        node's identity), so terminate_nodes can find whatever those commands left running."""
        return self._new_runner(node.id, base_env={
            "CORRAL_NODE_DIR": self.node_dir, "CORRAL_CLUSTER_NAME": self.cluster_name,
            "CORRAL_NODE_ID": node.id, "CORRAL_NODE_KIND": node.kind,
            "CORRAL_NODE_TYPE": node.node_type, "CORRAL_HEAD_IP": self.head_ip})

    def close(self) -> None:
        """Forget this provider's runners. Their SSH connections belong to the process-wide
        pool (launcher.ssh.pool), which other runners to the same hosts may be using right
        now, so they are left to it (ssh_pool.close_all() ends them)."""
        with self._runners_lock:
            self._runners = {}


# The interpreter of the environment corral ships itself into on every node (it has
# psutil and corral); a host where that never happened is tried with its python3.
NODE_ENV_PYTHON = "$HOME/.corral/env/bin/python3"


def stop_script(node_dir: str, grace_s: float) -> str:
    """Shell script run on a host to stop every runtime process of ours there, by PID:
    node_processes remembers the node's processes (environment tag CORRAL_NODE_DIR=node_dir,
    pid files), runs the runtime's orderly `corral stop`, then stops whatever is left;
    finally node_dir (keys included) is removed.

    The stopping runs as a program sent as source (node_processes.remote_program, needing
    only psutil), under corral's node environment's Python, or python3 when the host has
    none. Where neither has psutil (or there is no python3), corral never ran on the host:
    the runtime and everything the launcher runs after shipping itself need that
    environment; so nothing is searched, a note says so on stderr (terminate_nodes logs
    it), and the host is freed as usual. There is deliberately no second way to find
    processes."""
    directory = shlex.quote(node_dir)
    reaper = shlex.quote(node_processes.remote_program())
    corral_stop = shlex.quote(
        'PATH="$HOME/.corral/env/bin:$HOME/.local/bin:$PATH"; '
        'command -v corral >/dev/null 2>&1 && corral stop')
    return "\n".join([
        f'py="{NODE_ENV_PYTHON}"; [ -x "$py" ] || py=python3',
        'if command -v "$py" >/dev/null 2>&1; then',
        f'  "$py" -c {reaper} {directory} {grace_s:g} {corral_stop}; stopped=$?',
        f"  [ $stopped -eq 0 ] || [ $stopped -eq {node_processes.NO_PSUTIL_EXIT} ] || exit 1",
        "else",  # no Python, so no runtime either; never kill by unverified pid file
        "  echo 'corral: python3 not found: no processes searched' >&2",
        "fi",
        f"rm -rf {directory}",
    ])


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _parallel(function, items):
    """function over items on one process-wide pool: its threads are made once and
    reused, where a pool per call started up to 32 new threads for every listing, claim
    and terminate. function must not call _parallel itself (the pool could be full)."""
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        return [function(items[0])]
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=MAX_PARALLEL,
                                            thread_name_prefix="local-provider"))
    return list(_POOL[0].map(function, items))
