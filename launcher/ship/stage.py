"""The `shipping-corral` bootstrap stage: give an SSH node the corral that runs here.

    shipper = Shipper(provider_type)             # one per `up` (or per monitor), lazy
    result = shipper.ship(runner, probe, kind)   # probe: launcher.ship.probe.NodeProbe

For the node's platform (learnt by the probe) and kind (the head gets its provider's
extra: aws -> boto3, gcp -> the Google client; workers the base set) the wheelhouse is
built once per `up` and cached on disk (launcher.ship.wheelhouse). When the probe saw
that hash installed, nothing travels (at most `~/.corral/env` is repointed). Otherwise
the wheels and the installer (launcher.ship.node_install) go to a staging directory on
the node in one SFTP transfer, and the installer runs there with the node's Python.
Errors name the node, the cause and what to do (ShipError and the wheelhouse's own).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import shlex
import tempfile
import threading
import time
from typing import Callable

from launcher.errors import ClusterError
from launcher.ship import layout, node_install
from launcher.ship.platform import NodePlatform
from launcher.ship.probe import NodeProbe

INSTALL_TIMEOUT_S = 600.0
RELINK_TIMEOUT_S = 60.0
PROVIDER_EXTRAS = {"aws": "aws", "gcp": "gcp"}

# notify(text): a line about this node's shipping (shown by the progress view).
Notify = Callable[[str], None]


class ShipError(ClusterError):
    """Shipping corral to a node failed: `step` (upload, install, activate) on `host`,
    `cause`, and `hint`: what to do about it."""

    def __init__(self, host: str, step: str, cause: str, hint: str):
        self.host = host
        self.step = step
        self.cause = cause
        self.hint = hint
        super().__init__(f"{step} of corral on {host} failed: {cause}. {hint}")


@dataclasses.dataclass(frozen=True)
class ShipResult:
    wheelhouse_hash: str
    env_dir: str            # the exact environment on the node
    uploaded_bytes: int     # 0 when the node already had it
    build_s: float          # getting the wheelhouse here (0 when cached in this process)
    upload_s: float
    install_s: float        # on the node, as the installer measured it

    def describe(self) -> str:
        if not self.uploaded_bytes:
            return f"corral {self.wheelhouse_hash} already installed"
        return (f"corral {self.wheelhouse_hash} shipped: {self.uploaded_bytes / 1e6:.1f} MB "
                f"in {self.upload_s:.1f} s, installed in {self.install_s:.1f} s")


@functools.lru_cache(maxsize=1)
def corral_digest() -> str:
    """Identity of the running corral's code (what its own wheel holds): equal on this
    machine and on a node running the wheel shipped from here. Read once per process,
    so one `up` compares and writes one value even while the checkout is edited."""
    from launcher.ship.self_wheel import collect_sources, self_digest
    return self_digest(collect_sources())[:16]


def _default_build(platform: NodePlatform, extras: frozenset[str], on_progress: Notify):
    from launcher.ship.wheelhouse import build_wheelhouse
    return build_wheelhouse(platform, extras, on_progress=on_progress)


class Shipper:
    """Ships corral to the SSH nodes of one cluster. Thread-safe: the bootstraps of one
    `up` share it, and each wheelhouse is built (or found in the cache) once."""

    def __init__(self, provider_type: str, *, build=None):
        self.provider_type = provider_type
        self._build = build or _default_build
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        self._wheelhouses: dict[tuple, object] = {}

    def extras_for(self, node_kind: str) -> frozenset[str]:
        from launcher.tags import KIND_HEAD
        extra = PROVIDER_EXTRAS.get(self.provider_type)
        return frozenset({extra}) if extra and node_kind == KIND_HEAD else frozenset()

    def wheelhouse(self, platform: NodePlatform, extras: frozenset[str],
                   notify: Notify | None = None):
        """(wheelhouse, seconds spent getting it here): built or taken from the cache
        once per platform and extras; later calls wait for the first."""
        key = (platform, extras)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key in self._wheelhouses:
                return self._wheelhouses[key], 0.0
            started = time.monotonic()
            built = self._build(platform, extras, notify or (lambda text: None))
            self._wheelhouses[key] = built
            return built, time.monotonic() - started

    def ship(self, runner, probe: NodeProbe, node_kind: str, *, log_path: str | None = None,
             notify: Notify | None = None, cancel: threading.Event | None = None
             ) -> ShipResult:
        platform = probe.require_platform()
        wheelhouse, build_s = self.wheelhouse(platform, self.extras_for(node_kind), notify)
        digest = wheelhouse.hash
        env_dir = layout.env_dir(probe.home, digest)
        if digest in probe.envs:
            if probe.active_hash() != digest:
                self._activate(runner, probe, digest, log_path)
            return ShipResult(digest, env_dir, 0, build_s, 0.0, 0.0)
        if notify is not None:
            notify(f"uploading corral {digest} ({wheelhouse.size_bytes / 1e6:.1f} MB)")
        remote = layout.incoming_dir(probe.home, digest, secrets.token_hex(4))
        started = time.monotonic()
        self._upload(runner, probe, wheelhouse, remote)
        upload_s = time.monotonic() - started
        summary = self._install(runner, probe, wheelhouse, remote, log_path, cancel)
        return ShipResult(digest, env_dir, wheelhouse.size_bytes, build_s, upload_s,
                          float(summary.get("seconds", 0.0)))

    # -- steps ----------------------------------------------------------------------------
    def _upload(self, runner, probe: NodeProbe, wheelhouse, remote: str) -> None:
        """The wheels and the installer in one transfer, from a local directory of
        symlinks (file sync follows them; nothing is copied here)."""
        with tempfile.TemporaryDirectory(prefix="corral-ship-") as staging:
            for name in wheelhouse.wheels:
                os.symlink(os.path.join(wheelhouse.path, name), os.path.join(staging, name))
            os.symlink(os.path.abspath(node_install.__file__),
                       os.path.join(staging, "node_install.py"))
            try:
                runner.put(staging, remote)
            except (ClusterError, OSError) as error:
                raise ShipError(probe.host, "upload", f"{str(error).strip()} (to {remote})",
                                f"Check the free space of {probe.home} on the node "
                                f"(`df -h ~`) and that the SSH user can write there, then "
                                f"run `corral up` again") from error

    def _install(self, runner, probe: NodeProbe, wheelhouse, remote: str,
                 log_path: str | None, cancel: threading.Event | None) -> dict:
        record = {"corral_version": wheelhouse.corral_version,
                  "corral_digest": corral_digest(),
                  "extras": list(getattr(wheelhouse, "extras", ())),
                  "platform": probe.platform.describe()}
        python = probe.platform.python
        command = " ".join([
            shlex.quote(python), shlex.quote(f"{remote}/node_install.py"),
            "--wheelhouse", shlex.quote(remote), "--hash", shlex.quote(wheelhouse.hash),
            "--corral-home", shlex.quote(f"{probe.home}/{layout.CORRAL_DIR}"),
            "--record", shlex.quote(json.dumps(record, sort_keys=True)),
            "--keep", str(layout.KEEP_ENVS)])
        extra = {"cancel": cancel} if cancel is not None else {}
        result = runner.run(command, timeout_s=INSTALL_TIMEOUT_S, log_path=log_path, **extra)
        lines = (result.stdout or "").strip().splitlines()
        if not result.ok or not lines:
            cause = (result.tail(8) if hasattr(result, "tail") else result.stderr) \
                or f"exit {result.exit_code}"
            raise ShipError(probe.host, "install", f"the installer ({python}) exited "
                            f"{result.exit_code}: {cause.strip()}",
                            f"The node log has the full output; check the free space "
                            f"under {probe.home}/{layout.CORRAL_DIR} and run `corral up` "
                            f"again")
        try:
            return json.loads(lines[-1])
        except ValueError:
            return {}

    def _activate(self, runner, probe: NodeProbe, digest: str, log_path: str | None) -> None:
        """Point ~/.corral/env at an environment the node already has."""
        script = ("import os, sys; link, target = sys.argv[1], sys.argv[2]; "
                  "temporary = '%s.tmp-%d-%s' % (link, os.getpid(), os.urandom(4).hex()); "
                  "os.symlink(target, temporary); os.replace(temporary, link); "
                  "os.utime(os.path.join(os.path.dirname(link), target))")
        command = " ".join([shlex.quote(probe.platform.python), "-c", shlex.quote(script),
                            shlex.quote(layout.active_env(probe.home)),
                            shlex.quote(f"envs/{digest}")])
        result = runner.run(command, timeout_s=RELINK_TIMEOUT_S, log_path=log_path)
        if not result.ok:
            raise ShipError(probe.host, "activation", (result.stderr or "").strip()
                            or f"exit {result.exit_code}",
                            f"{layout.active_env(probe.home)} must be a symlink corral may "
                            f"replace; move it away and run `corral up` again")
