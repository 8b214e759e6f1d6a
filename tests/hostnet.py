"""Real SSH test hosts: network namespaces on a bridge, each running its own sshd.

The building blocks; tests/testhosts.py is the pytest plugin on top (fixture `test_hosts`).
Scripts (bench/up_time.py) use the plain context manager:

    with host_network(4) as network:
        network.hosts[0].ip, network.ssh_user, network.ssh_private_key
        network.add_hosts(12)   # more hosts on the same bridge

Each host is a network namespace `corral-h<N>-<pid>s<slot>` whose veth (fixed MAC addresses,
so a re-created host is reachable at once, with no stale ARP entry in the way) hangs on a
bridge `crb<pid%10000>s<slot>` in the root namespace. Inside it sshd runs as PID 1 of its own mount, PID
and UTS namespaces (`unshare --mount --pid --fork --mount-proc --uts`), with private
tmpfs on /tmp and /dev/shm and hostname `hostN`. So /tmp/corral is per host, a host's
process list is its own, and killing the host's sshd (its namespace init) kills every
process of that host.

Several pytest sessions may run at once on one machine (several engineers, one box), so
198.18.0.0/24 is cut into 8 slots of /27 and each session takes a free slot (a flock held
for the session's lifetime). In slot k: bridge 198.18.0.(32k+1)/27, host N at
198.18.0.(32k+2+N) (N < 28), and 198.18.0.(32k+30) is a free address with nothing behind
it (`network.unreachable_ip`). A route `unreachable 198.18.0.0/24` (metric 1000+k) makes
every other address of the /24 fail at once instead of leaving the machine. A session that
died without cleaning up is cleaned by the next session that takes its slot.

Hosts share this machine's file system apart from /tmp and /dev/shm (so keep test files
under /tmp) and ~/.corral, which is a directory of the network's own, shared by its hosts
(what `corral up` ships lands there and goes with the network, not in this machine's
~/.corral). Like a fresh machine, a host has an empty ~/.bashrc and a minimal ~/.profile
(bind-mounted over root's own, which here run pyenv's slow init on every SSH command), and
sessions get PATH with this Python's bin directory first (sshd SetEnv), like a provisioned
machine where our Python and the `corral` script are installed.

Fresh hosts (`open_network(4, fresh=True)`, `add_hosts(n, fresh=True)`; the pytest fixture
`fresh_hosts`) look like a stock VM that never saw corral: in the host's mount namespace
an empty tmpfs (seeded from /etc/skel) hides the home (/root), the project checkout (the
repository of tests/, wherever it is) and every Python prefix that is not the
distribution's (sys.prefix, sys.base_prefix, pyenv, a virtualenv) are hidden by empty
tmpfs too, and sessions get only the standard PATH. So the only Python is the
distribution's /usr/bin/python3, and `corral` and `import runtime` fail there until
`corral up` ships them (`fresh_problem(host)` says what gives a host away). Their homes
are private, so they are wiped between tests like /tmp.

After each test the fixture closes pooled SSH connections, kills every process in each
host's PID namespace except its init (sshd) and wipes the host's /tmp and /dev/shm.
`TestHost.processes()` lists the host's processes other than sshd's own (the listener and
its per-connection `sshd`/`sshd-session` processes, and corral's per-connection command
server, launcher.ssh.shell).
"""
from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from runtime.node import processes

STATE_ROOT = Path("/run/corral-testhosts")
SLOT_COUNT = 8
SLOT_SIZE = 32
MAX_HOSTS_PER_SLOT = 28
SSHD = "/usr/sbin/sshd"
SSHD_COMMS = {"sshd", "sshd-session", "sshd-auth"}
REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "ssh-keygen")
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHECKOUT = Path(__file__).resolve().parent.parent
FRESH_HOME = "/root"


def missing_requirements() -> str | None:
    """Why the test hosts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "SSH test hosts need root (network namespaces)"
    missing = [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if not os.path.exists(SSHD):
        missing.append(SSHD)
    if missing:
        return ("SSH test hosts need " + ", ".join(missing)
                + " (python3 -m tests.system_packages installs them)")
    return None


class CommandFailed(subprocess.CalledProcessError):
    """A set-up command failed; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{' '.join(self.cmd)} failed ({self.returncode}): {(self.stderr or '').strip()}"


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise CommandFailed(result.returncode, list(argv), result.stdout, result.stderr)
    return result


def _pid_ns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _is_command_server(pid: int) -> bool:
    """corral's command server of an SSH connection (`python3 -c ... corral-shell NONCE`,
    launcher.ssh.shell): part of the session, like sshd's own processes."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    argv = argv[:-1] if argv and not argv[-1] else argv
    return len(argv) > 3 and b"-c" in argv and argv[-2] == b"corral-shell"


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


@dataclasses.dataclass
class TestHost:
    """One SSH host. `ip` is reachable from the root network namespace on port 22."""

    __test__ = False  # not a pytest test class

    index: int
    name: str
    ip: str
    netns: str
    mac: str
    directory: Path
    launcher_pid: int = 0  # `unshare` in the root PID namespace
    init_pid: int = 0      # sshd: PID 1 of the host's PID namespace (root-namespace pid)
    sshd_options: dict | None = None  # non-default sshd_config options, until a reset
    fresh: bool = False  # a stock VM: private empty home, no corral, no project Python
    bashrc: str | None = None  # the host's ~/.bashrc text (None: an empty rc), until a reset

    @property
    def sshd_log(self) -> Path:
        return self.directory / "sshd.log"

    def _namespace_pids(self) -> list[int]:
        inode = _pid_ns_inode(self.init_pid)
        if inode is None:
            return []
        return [pid for pid in _all_pids() if _pid_ns_inode(pid) == inode]

    def processes(self) -> list[tuple[int, str]]:
        """(root-namespace pid, cmdline) of every live process in this host, sshd's
        excluded. A process that is exiting runs nothing and is not listed: a zombie
        waiting to be reaped, and one caught between releasing its memory and becoming
        a zombie, whose cmdline already reads empty (CI saw the connection's command
        server so, the moment `down` closed its connection)."""
        listed = []
        for pid in self._namespace_pids():
            if pid == self.init_pid or _comm(pid) in SSHD_COMMS or _is_command_server(pid):
                continue
            cmdline = _cmdline(pid)
            if cmdline and processes.is_alive(pid):
                listed.append((pid, cmdline))
        return listed

    def run(self, cmd: str, timeout_s: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command inside this host (its net, mount, PID and UTS namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-n", "-m", "-p", "-u", "--",
             "sh", "-c", cmd], capture_output=True, text=True, timeout=timeout_s, cwd="/")

    def kill_processes(self) -> None:
        """Kill every process of the host except its init (sshd), by pid."""
        for _ in range(50):
            victims = [pid for pid in self._namespace_pids() if pid != self.init_pid]
            if not victims:
                return
            for pid in victims:
                _kill(pid)
            time.sleep(0.02)

    def wipe_tmp(self) -> None:
        self.run("rm -rf /tmp/* /tmp/.[!.]* /tmp/..?* /dev/shm/* 2>/dev/null; true")

    def wipe_home(self) -> None:
        """A fresh host's home back to /etc/skel (it is the host's own tmpfs)."""
        if self.fresh:
            self.run(f"find {FRESH_HOME} -mindepth 1 -maxdepth 1 -exec rm -rf {{}} + ; "
                     f"cp -a /etc/skel/. {FRESH_HOME}/ 2>/dev/null; chmod 700 {FRESH_HOME}; true")


class HostNetwork:
    """A bridge plus hosts in one address slot. Create with `open()`, end with `close()`."""

    def __init__(self, slot: int, lock_fd: int):
        self.slot = slot
        self._lock_fd = lock_fd
        self.pid = os.getpid()
        self.directory = STATE_ROOT / f"slot{slot}"
        self.base = SLOT_SIZE * slot
        self.bridge = f"crb{self.pid % 10000}s{slot}"
        self.bridge_ip = f"198.18.0.{self.base + 1}"
        self.unreachable_ip = f"198.18.0.{self.base + 30}"
        self.ssh_user = "root"
        self.ssh_private_key = str(self.directory / "client_ed25519")
        self.all_hosts: list[TestHost] = []
        self.fresh = False  # what add_hosts makes by default
        self._closed = False

    @property
    def hosts(self) -> list[TestHost]:
        return list(self.all_hosts)

    # -- state file: what to tear down if this session dies ------------------------------
    def _save_state(self) -> None:
        state = {"pid": self.pid, "bridge": self.bridge, "slot": self.slot,
                 "netns": [host.netns for host in self.all_hosts]}
        (STATE_ROOT / f"slot{self.slot}.json").write_text(json.dumps(state))

    @staticmethod
    def _cleanup_leftovers(slot: int) -> None:
        state_file = STATE_ROOT / f"slot{slot}.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text() or "{}")
        for netns in state.get("netns", []):
            _destroy_netns(netns)
        if state.get("bridge"):
            _sh("ip", "link", "del", state["bridge"], check=False)
        _sh("ip", "route", "del", "unreachable", "198.18.0.0/24", "metric",
            str(1000 + slot), check=False)
        shutil.rmtree(STATE_ROOT / f"slot{slot}", ignore_errors=True)
        state_file.unlink(missing_ok=True)

    # -- building ------------------------------------------------------------------------
    def open(self) -> "HostNetwork":
        self._cleanup_leftovers(self.slot)
        self.directory.mkdir(parents=True, mode=0o700)
        self._save_state()
        _sh("ip", "link", "add", "name", self.bridge, "type", "bridge")
        _sh("ip", "link", "set", self.bridge, "address", f"02:c0:12:{self.slot:02x}:ff:ff")
        _sh("ip", "addr", "add", f"{self.bridge_ip}/27", "dev", self.bridge)
        _sh("ip", "link", "set", self.bridge, "up")
        _sh("ip", "route", "add", "unreachable", "198.18.0.0/24", "metric",
            str(1000 + self.slot))
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "corral-test-client",
            "-f", self.ssh_private_key)
        return self

    def add_hosts(self, count: int, fresh: bool | None = None) -> list[TestHost]:
        """`count` more hosts; `fresh` (default: the network's) makes them stock VMs."""
        start = len(self.all_hosts)
        if start + count > MAX_HOSTS_PER_SLOT:
            raise RuntimeError(f"at most {MAX_HOSTS_PER_SLOT} test hosts per network")
        new_hosts = []
        for index in range(start, start + count):
            host = TestHost(index=index, name=f"host{index}",
                            ip=f"198.18.0.{self.base + 2 + index}",
                            netns=f"corral-h{index}-{self.pid}s{self.slot}",
                            mac=f"02:c0:12:{self.slot:02x}:{index:02x}:01",
                            directory=self.directory / f"host{index}",
                            fresh=self.fresh if fresh is None else fresh)
            self.all_hosts.append(host)
            self._save_state()
            self._create_netns(host)
            self._write_sshd_config(host, new_host_key=True)
            self._start_sshd(host)
            new_hosts.append(host)
        for host in new_hosts:
            self._wait_sshd(host)
        return new_hosts

    def _create_netns(self, host: TestHost) -> None:
        outer = f"crv{self.pid % 10000}s{self.slot}h{host.index}"
        _sh("ip", "netns", "add", host.netns)
        _sh("ip", "link", "add", outer, "address",
            f"02:c0:12:{self.slot:02x}:{host.index:02x}:02", "type", "veth",
            "peer", "name", "eth0", "address", host.mac, "netns", host.netns)
        _sh("ip", "link", "set", outer, "master", self.bridge)
        _sh("ip", "link", "set", outer, "up")
        for argv in (("ip", "link", "set", "lo", "up"),
                     ("ip", "addr", "add", f"{host.ip}/27", "dev", "eth0"),
                     ("ip", "link", "set", "eth0", "up")):
            _sh("ip", "netns", "exec", host.netns, *argv)

    def _write_sshd_config(self, host: TestHost, new_host_key: bool,
                           sshd_options: dict[str, str] | None = None) -> None:
        host.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = host.directory / "ssh_host_ed25519_key"
        if new_host_key:
            key.unlink(missing_ok=True)
            Path(f"{key}.pub").unlink(missing_ok=True)
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key))
        authorized = host.directory / "authorized_keys"
        shutil.copyfile(f"{self.ssh_private_key}.pub", authorized)
        path = STANDARD_PATH if host.fresh else \
            f"{os.path.dirname(sys.executable)}:{STANDARD_PATH}"
        options = [f"{key} {value}" for key, value in (sshd_options or {}).items()]
        (host.directory / "sshd_config").write_text("\n".join(options + [  # first one wins
            "Port 22", f"ListenAddress {host.ip}", f"HostKey {key}",
            f"PidFile {host.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized}",
            "PermitRootLogin yes", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "MaxSessions 100", "MaxStartups 200", "MaxAuthTries 10", "UseDNS no",
            "LoginGraceTime 30", "PrintMotd no", "ClientAliveInterval 0",
            "Subsystem sftp internal-sftp", f"SetEnv PATH={path}", "LogLevel INFO", ""]))

    def _start_sshd(self, host: TestHost) -> None:
        config = host.directory / "sshd_config"
        rc_files = ""
        for name, text in (("bashrc", host.bashrc or "# test host: no rc\n"),
                           ("profile", "[ -n \"$BASH\" ] && [ -f ~/.bashrc ] && . ~/.bashrc\n")):
            (host.directory / name).write_text(text)
            if os.path.exists(f"/root/.{name}"):
                rc_files += f"mount --bind {host.directory / name} /root/.{name} && "
        script = ("mount --make-rprivate / && mount -t tmpfs -o mode=1777 tmpfs /tmp && "
                  "mount -t tmpfs -o mode=1777 tmpfs /dev/shm && " +
                  (_fresh_mounts() if host.fresh else _shared_corral_home(host)) + rc_files +
                  f"hostname {host.name} && mkdir -p /run/sshd && exec {SSHD} -D -e -f {config}")
        with open(host.sshd_log, "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, "unshare", "--mount", "--pid", "--fork",
                 "--mount-proc", "--uts", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        host.launcher_pid = process.pid
        self._processes = getattr(self, "_processes", {})
        self._processes[host.index] = process
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    host.init_pid = int(pids[0])
                    return
            if process.poll() is not None:
                break
            time.sleep(0.005)
        raise RuntimeError(f"{host.name}: sshd did not start: {host.sshd_log.read_text()}")

    def _wait_sshd(self, host: TestHost, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with socket.create_connection((host.ip, 22), timeout=1):
                    return
            if self._processes[host.index].poll() is not None:
                break
            time.sleep(0.01)
        raise RuntimeError(f"{host.name}: sshd not accepting on {host.ip}:22; log:\n"
                           + host.sshd_log.read_text(errors="replace"))

    # -- per-test and lifecycle ----------------------------------------------------------
    def stop_host(self, host: TestHost) -> None:
        """Kill the host's namespaces' processes (sshd is init: everything dies with it)."""
        if host.init_pid:
            _kill(host.init_pid)  # unshare (its parent) reaps it and exits
        process = getattr(self, "_processes", {}).get(host.index)
        if process is not None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for pid in _netns_pids(host.netns):
            _kill(pid)

    def restart_host(self, host: TestHost, new_host_key: bool = False,
                     sshd_options: dict[str, str] | None = None,
                     bashrc: str | None = None) -> None:
        """Stop the host (all its processes, its /tmp) and start it again, optionally with a
        new host key — like a machine rebooted or re-created at the same address.
        `sshd_options` (e.g. {"MaxSessions": "2"}) override sshd_config, and `bashrc` is the
        text of the host's ~/.bashrc (e.g. a slow one, like a user's pyenv or conda init),
        until the next reset."""
        self.stop_host(host)
        host.sshd_options = sshd_options
        host.bashrc = bashrc
        self._write_sshd_config(host, new_host_key=new_host_key, sshd_options=sshd_options)
        self._start_sshd(host)
        self._wait_sshd(host)

    def reset_hosts(self) -> None:
        """Between tests: every host back to a clean state (only sshd running, empty /tmp)."""
        with contextlib.suppress(ImportError):
            from launcher.ssh import pool as ssh_pool
            ssh_pool.close_all()
        for host in self.all_hosts:
            if _pid_ns_inode(host.init_pid) is None or host.sshd_options or host.bashrc:
                self.restart_host(host)  # a test killed or reconfigured it: start afresh
                continue
            host.kill_processes()
            host.wipe_tmp()
            host.wipe_home()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ImportError):
            from launcher.ssh import pool as ssh_pool
            ssh_pool.close_all()
        for host in self.all_hosts:
            self.stop_host(host)
            _destroy_netns(host.netns)
        _sh("ip", "link", "del", self.bridge, check=False)
        _sh("ip", "route", "del", "unreachable", "198.18.0.0/24", "metric",
            str(1000 + self.slot), check=False)
        shutil.rmtree(self.directory, ignore_errors=True)
        (STATE_ROOT / f"slot{self.slot}.json").unlink(missing_ok=True)
        os.close(self._lock_fd)


def _hidden_on_fresh_hosts() -> list[str]:
    """What a fresh host must not see besides its home: the checkout, and Python
    prefixes that are not the distribution's (/usr), unless already under the home or
    /tmp (both private there)."""
    candidates = [str(CHECKOUT), sys.prefix, sys.base_prefix, os.environ.get("VIRTUAL_ENV"),
                  os.environ.get("CONDA_PREFIX"),
                  os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")]
    hidden: list[str] = []
    for candidate in candidates:
        if not candidate or not os.path.isdir(candidate):
            continue
        path = os.path.realpath(candidate)
        if path in ("/", "/usr", "/usr/local") or any(
                path == root or path.startswith(root + "/")
                for root in (FRESH_HOME, "/tmp", *hidden)):
            continue
        hidden.append(path)
    return hidden


def _shared_corral_home(host: TestHost) -> str:
    """Shell that gives a (non-fresh) host's ~/.corral a directory of the network's own,
    shared by its hosts: what `corral up` ships there (its environments) lands in the test
    network's state and goes with it, never in this machine's real ~/.corral."""
    shared = host.directory.parent / "corral-home"
    shared.mkdir(mode=0o700, exist_ok=True)
    return (f"mkdir -p /root/.corral && "
            f"mount --bind {shlex.quote(str(shared))} /root/.corral && ")


def _fresh_mounts() -> str:
    """Shell (run in the host's new mount namespace) that makes it a stock VM."""
    script = (f"mount -t tmpfs -o mode=700 tmpfs {FRESH_HOME} && "
              f"cp -a /etc/skel/. {FRESH_HOME}/ && chmod 700 {FRESH_HOME} && ")
    for path in _hidden_on_fresh_hosts():
        script += f"mount -t tmpfs -o mode=755,size=1m tmpfs {shlex.quote(path)} && "
    return script


def fresh_problem(host: TestHost) -> str | None:
    """Why `host` does not look like a stock VM that never saw corral (None: it does):
    what a session there finds with the standard PATH."""
    script = "\n".join([
        'echo "corral=$(command -v corral)"',
        "echo \"runtime=$(cd / && python3 -c 'import runtime; print(runtime.__file__)' "
        '2>/dev/null)"',
        "echo \"prefix=$(python3 -c 'import sys; print(sys.base_prefix)')\"",
        f'echo "state=$(ls -A {FRESH_HOME}/.corral 2>/dev/null | head -3 | tr "\\n" " ")"',
        f'echo "checkout=$(ls -A {shlex.quote(str(CHECKOUT))} 2>/dev/null | head -3 '
        '| tr "\\n" " ")"'])
    result = host.run(f"env -i HOME={FRESH_HOME} PATH={STANDARD_PATH} sh -c "
                      + shlex.quote(script))
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    problems = [f"{what} {found[key].strip()}" for key, what in (
        ("corral", "corral is on PATH at"), ("runtime", "runtime imports from"),
        ("state", f"{FRESH_HOME}/.corral holds"), ("checkout", "the checkout shows"))
        if found.get(key, "").strip()]
    if found.get("prefix", "").strip() != "/usr":
        problems.append(f"python3's prefix is {found.get('prefix', '?').strip() or '?'}")
    return "; ".join(problems) or None


def _netns_pids(netns: str) -> list[int]:
    result = _sh("ip", "netns", "pids", netns, check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _destroy_netns(netns: str) -> None:
    """Kill every process in a network namespace by pid, then delete it (and its veth)."""
    for _ in range(50):
        pids = _netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            _kill(pid)
        time.sleep(0.02)
    _sh("ip", "netns", "del", netns, check=False)


def _take_slot(wait_s: float = 300) -> tuple[int, int]:
    STATE_ROOT.mkdir(parents=True, exist_ok=True, mode=0o700)
    deadline = time.monotonic() + wait_s
    while True:
        taken = None
        for slot in range(SLOT_COUNT):
            fd = os.open(STATE_ROOT / f"slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            # A free slot: whatever it still holds was left by a session that died.
            HostNetwork._cleanup_leftovers(slot)
            if taken is None:
                taken = (slot, fd)
            else:
                os.close(fd)
        if taken is not None:
            return taken
        if time.monotonic() > deadline:
            raise RuntimeError(f"all {SLOT_COUNT} test-host network slots stayed busy")
        time.sleep(0.5)


def open_network(host_count: int = 0, fresh: bool = False) -> HostNetwork:
    """A new network in a free slot with `host_count` hosts (stock VMs with `fresh`);
    call `.close()` when done."""
    slot, fd = _take_slot()
    network = HostNetwork(slot, fd)
    network.fresh = fresh
    atexit.register(network.close)
    try:
        network.open()
        if host_count:
            network.add_hosts(host_count)
    except BaseException:
        network.close()
        raise
    return network


@contextlib.contextmanager
def host_network(host_count: int, fresh: bool = False):
    """Context manager for scripts: a network with `host_count` hosts (stock VMs with
    `fresh`), torn down on exit."""
    reason = missing_requirements()
    if reason:
        raise RuntimeError(reason)
    network = open_network(host_count, fresh=fresh)
    try:
        yield network
    finally:
        network.close()
