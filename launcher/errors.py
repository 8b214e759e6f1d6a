"""The launcher's error tree. Every leaf carries the data a caller (or a retry) needs.

Only the CLI turns these into exit codes and messages.
"""
from __future__ import annotations


class ClusterError(Exception):
    """Root of every error raised by the launcher, the providers and the autoscaler."""

    exit_code = 1


class ConfigError(ClusterError):
    """A problem in the cluster YAML, located by its path inside the document and line."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, message: str, source: str | None = None):
        self.path = path
        self.line = line
        self.message = message
        self.source = source
        where = source or "cluster config"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {path}: {message}" if path else f"{where}: {message}")


class ConfigErrors(ClusterError):
    """Several config problems found in one pass; one message per problem."""

    exit_code = 2

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        super().__init__("\n".join(str(error) for error in self.errors))


class UsageError(ClusterError):
    """The command was asked for something that cannot be done as asked."""

    exit_code = 2


class ProviderError(ClusterError):
    """A node provider failed. `retryable` says whether trying again (later) may help
    (the class says what is usual for its kind; `retryable=` overrides it for one
    error); `try_elsewhere` says whether another zone or node type is worth trying.
    A failed launch names the nodes it created anyway (`created_ids`) and, when it
    tried several places, each place's failure (`failures`: [(place, message)])."""

    retryable = False
    try_elsewhere = False

    def __init__(self, message: str, *, node_type: str | None = None, zone: str | None = None,
                 cause: str | None = None, retryable: bool | None = None,
                 created_ids: list[str] | tuple[str, ...] = (),
                 failures: list[tuple[str, str]] | tuple[tuple[str, str], ...] = ()):
        self.node_type = node_type
        self.zone = zone
        self.cause = cause
        if retryable is not None:
            self.retryable = retryable
        self.created_ids = list(created_ids)
        self.failures = list(failures)
        super().__init__(message)

    def add_created_ids(self, ids: list[str]) -> "ProviderError":
        """Name nodes created before this error stopped a launch (an earlier zone, or
        stopped nodes restarted first), for the caller that made them; returns self to
        re-raise. The one field filled in after construction: the error is raised below
        the code that knows them."""
        self.created_ids = [*ids, *(node_id for node_id in self.created_ids
                                    if node_id not in ids)]
        return self


class PartialTerminateError(ProviderError):
    """Some nodes could not be terminated (the others were). Retrying may help;
    `failed_ids` names the nodes still there, `reasons` says why for each."""

    retryable = True

    def __init__(self, summary: str, reasons: dict[str, str]):
        self.failed_ids = list(reasons)
        self.reasons = dict(reasons)
        super().__init__(f"{summary}: " + "; ".join(
            f"{node_id}: {reason}" for node_id, reason in reasons.items()))


class CapacityError(ProviderError):
    """The cloud has no capacity for this node type here now (retry later or elsewhere).
    A provider that knows how many nodes would fit says so: `free_count` of the
    `requested_count` asked for, and `unreachable_ips`, hosts it could not ask."""

    retryable = True
    try_elsewhere = True

    def __init__(self, message: str, *, free_count: int = 0,
                 requested_count: int | None = None,
                 unreachable_ips: list[str] | tuple[str, ...] = (), **details):
        self.free_count = free_count
        self.requested_count = requested_count
        self.unreachable_ips = list(unreachable_ips)
        super().__init__(message, **details)


class QuotaError(ProviderError):
    """An account quota stops the launch; other node types may still fit."""

    retryable = False
    try_elsewhere = True


class ProviderAuthError(ProviderError):
    """Credentials are missing or refused."""


class RateLimitError(ProviderError):
    """The provider's API throttled us beyond its own retries."""

    retryable = True


class NodeNotFoundError(ProviderError):
    """The node id is unknown to the provider (already gone?)."""


class CommandError(ClusterError):
    """A remote or local command failed. Carries the CommandResult."""

    def __init__(self, result, message: str | None = None):
        self.result = result
        tail = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
        text = message or (f"command on {result.host} exited {result.exit_code}: {result.command}")
        if tail:
            text += "\n  " + "\n  ".join(tail)
        super().__init__(text)


class SSHUnreachableError(ClusterError):
    """SSH to a host did not come up within the timeout."""

    def __init__(self, host: str, timeout_s: float, last_error: str):
        self.host = host
        self.timeout_s = timeout_s
        self.last_error = last_error
        super().__init__(f"could not reach {host} over SSH within {timeout_s:g} s: {last_error}")


class SSHKeyError(ClusterError):
    """No usable key to log in to `host` with, for a reason only the user can fix: the
    key file named is missing, unreadable, or passphrase-protected and not in ssh-agent,
    or there is no key at all. `key_path` is the key (None: no key at all), `fix` says
    what to do. Not retried: waiting does not help."""

    def __init__(self, host: str, key_path: str | None, problem: str, fix: str):
        self.host = host
        self.key_path = key_path
        self.problem = problem
        self.fix = fix
        what = f"SSH key {key_path} {problem}" if key_path else problem
        super().__init__(f"cannot log in to {host}: {what}; {fix}")


class SSHConfigError(ClusterError):
    """The user's ssh_config (~/.ssh/config, or $CORRAL_SSH_CONFIG) cannot be used:
    unparsable, or a ProxyJump chain that loops."""

    exit_code = 2

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class HostKeyMismatchError(ClusterError):
    """A host presented a key different from the one pinned on first contact."""

    def __init__(self, host: str, known_hosts_path: str, expected: str, got: str):
        self.host = host
        self.known_hosts_path = known_hosts_path
        super().__init__(
            f"host key of {host} changed (pinned {expected}, now {got}); refusing to connect. "
            f"If the host was legitimately re-created, remove its line from {known_hosts_path}.")


class BootstrapError(ClusterError):
    """A node failed a bootstrap stage."""

    def __init__(self, node_id: str, stage: str, message: str, log_path: str | None = None):
        self.node_id = node_id
        self.stage = stage
        self.log_path = log_path
        super().__init__(f"node {node_id} failed in {stage}: {message}"
                         + (f" (log: {log_path})" if log_path else ""))


class WheelhouseError(ClusterError):
    """corral could not gather a wheel it must ship to a node: `requirement` (e.g.
    "pyzmq==27.3.0") for `platform` (a launcher.ship.platform.NodePlatform); `message`
    says why and what to do."""

    def __init__(self, platform, requirement: str, message: str):
        self.platform = platform
        self.requirement = requirement
        self.message = message
        super().__init__(f"cannot ship {requirement} to a node running "
                         f"{platform.describe()}: {message}")


class StateFileError(ClusterError):
    """A state file corral keeps (a process node's node.json, ...) is unreadable: not
    valid JSON (truncated), the wrong shape, or missing where it must be. `path` names
    the file, `problem` says what is wrong with it, `fix` what to do."""

    def __init__(self, path: str, problem: str, fix: str = ""):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: corrupt state file: {problem}" + (f"; {fix}" if fix else ""))
