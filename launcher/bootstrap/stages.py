"""Bring one node to up-to-date through its CommandRunner: a small state machine.

    waiting-for-ssh -> shipping-corral -> syncing-files -> setting-up -> starting
                  -> up-to-date                     (any stage) -> update-failed

On a node reached over SSH the first round trip (launcher.ship.probe) makes the node dir
and learns the node's platform and installed corral environments; `shipping-corral` then
installs the corral that runs here if the node lacks it (launcher.ship.stage), and every
later command sees that environment first (CORRAL_ENV, PATH). Nodes of the `process`
provider run on this machine and skip both.

Every stage is written to the node's tags (TAG_NODE_STATUS) as it begins, so the laptop,
the head's autoscaler and `corral status` all see the same truth. A failure records the
stage, the failing command and its exit code in TAG_FAILURE, and the command's last lines
of output in the error and in the node's log (launcher.paths.node_log_path).

The commands of one stage run in one remote shell (launcher.bootstrap.command_batch), so a stage
costs one round trip however many commands it has.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from typing import Callable

import yaml

from launcher import paths
from launcher.bootstrap.command_batch import run_batch
from launcher.errors import BootstrapError, ClusterError
from launcher.node_states import check_stage_transition
from launcher.bootstrap.hashing import TAG_CONFIG_HASH, TAG_RUNTIME_PARTS
# ClusterContext is part of this module's interface (the autoscaler builds one).
from launcher.bootstrap.node_context import (DEFAULT_NODE_DIR, ClusterContext, head_ssh_key,
                                   known_node_dir, node_ip)
from launcher.providers.base import Node, NodeProvider
from launcher.ship.layout import ACTIVE_ENV_SHELL, ships_to
from launcher.ship.probe import NodeProbe, parse_probe, probe_command
from launcher.bootstrap.tag_writer import TagWriter
from launcher.tags import (KIND_HEAD, STATUS_SETTING_UP, STATUS_SHIPPING_CORRAL,
                           STATUS_STARTING, STATUS_SYNCING_FILES, STATUS_UP_TO_DATE,
                           STATUS_UPDATE_FAILED, STATUS_WAITING_FOR_SSH, TAG_FAILURE,
                           TAG_LAUNCH_HASH, TAG_NODE_STATUS, TAG_RUNTIME_HASH)

FAILURE_TAG_MAX_CHARS = 200

# Called as on_stage(node_id, stage, detail) whenever a node enters a stage.
StageCallback = Callable[[str, str, str], None]


@dataclasses.dataclass(frozen=True)
class BootstrapSteps:
    """Which stages a bootstrap runs. `config_only`: only re-upload the head's config."""
    sync_files: bool = True
    run_setup: bool = True
    run_start: bool = True
    config_only: bool = False

    def describe(self) -> str:
        if self.config_only:
            return "upload config"
        parts = [name for name, on in (("sync", self.sync_files), ("setup", self.run_setup),
                                       ("start", self.run_start)) if on]
        return " + ".join(parts) if parts else "nothing"


FULL = BootstrapSteps()
RESTART_ONLY = BootstrapSteps(run_setup=False)
NO_RESTART = BootstrapSteps(run_start=False)
CONFIG_ONLY = BootstrapSteps(sync_files=False, run_setup=False, run_start=False,
                             config_only=True)


@dataclasses.dataclass(frozen=True)
class BootstrapOutcome:
    node_id: str
    node_kind: str
    node_type: str
    ip: str | None
    status: str  # STATUS_UP_TO_DATE or STATUS_UPDATE_FAILED
    duration_s: float
    steps: str
    error: BootstrapError | None = None
    log_path: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# Run first in every stage script: the node dir exists, private, with keys/ and session/.
NODE_DIR_PRELUDE = ('mkdir -p "$CORRAL_NODE_DIR/keys" "$CORRAL_NODE_DIR/session" && '
                    'chmod 700 "$CORRAL_NODE_DIR" "$CORRAL_NODE_DIR/keys" '
                    '"$CORRAL_NODE_DIR/session"')


def resolve_node_dir_command() -> str:
    """One round trip: find the node dir, create it (0700) and print it."""
    return (f'd="${{CORRAL_NODE_DIR:-{DEFAULT_NODE_DIR}}}"; '
            'mkdir -p "$d/keys" "$d/session" && chmod 700 "$d" "$d/keys" "$d/session" && '
            'echo "$d"')


class _Background:
    """Run `action` in a thread; wait() returns the error it raised, if any."""

    def __init__(self, action):
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(action,), daemon=True)
        self._thread.start()

    def _run(self, action) -> None:
        try:
            action()
        except Exception as error:  # noqa: BLE001 - thread boundary: wait() reports it
            self.error = error

    def wait(self) -> BaseException | None:
        self._thread.join()
        return self.error


class _StageFailed(Exception):
    def __init__(self, message: str, tag_text: str):
        super().__init__(message)
        self.message = message
        self.tag_text = tag_text


class NodeBootstrap:
    """One run of the state machine for one node."""

    def __init__(self, provider: NodeProvider, node: Node, context: ClusterContext,
                 steps: BootstrapSteps = FULL, *, on_stage: StageCallback | None = None,
                 command_timeout_s: float | None = None,
                 cancel: threading.Event | None = None):
        self.provider = provider
        self.cancel = cancel
        self.node = node
        self.context = context
        self.config = context.config
        self.steps = steps
        self.on_stage = on_stage
        self.command_timeout_s = command_timeout_s
        self.is_head = node.kind == KIND_HEAD
        self.hashes = context.hashes(node.kind, node.node_type)
        self.log_path = str(paths.node_log_path(self.config.cluster_name, node.id))
        self.stage = STATUS_WAITING_FOR_SSH
        # The stage the node's tags were last told (checked against the state table
        # before each write: launcher.node_states).
        self.recorded_stage = node.status
        self.runner = None
        self._private_sync: _Background | None = None
        self.node_dir = ""
        self.env: dict[str, str] = {}
        self.probe: NodeProbe | None = None  # SSH nodes: what the first round trip learnt
        self.shipped = None  # launcher.ship.stage.ShipResult, once shipping-corral ran

    def run(self) -> BootstrapOutcome:
        started = time.monotonic()
        error = None
        self.tags = TagWriter(self.provider, self.node.id)
        try:
            self._run_stages()
            status = STATUS_UP_TO_DATE
        except _StageFailed as failed:
            status = STATUS_UPDATE_FAILED
            error = BootstrapError(self.node.id, self.stage, failed.message, self.log_path)
            self._record_failure(failed.tag_text)
        finally:
            if self._private_sync is not None:  # a failed stage: let the copy end first
                self._private_sync.wait()
            self.tags.finish()  # idempotent after a final write; never leaves a thread
        self._notify(status, str(error) if error else "")
        return BootstrapOutcome(self.node.id, self.node.kind, self.node.node_type,
                                node_ip(self.node), status, time.monotonic() - started,
                                self.steps.describe(), error, self.log_path)

    # -- stages -------------------------------------------------------------------------
    def _run_stages(self) -> None:
        self._enter(STATUS_WAITING_FOR_SSH)
        try:
            self.runner = self.provider.command_runner(self.node)
            if self.cancel is not None:
                self.runner.wait_ready(self.config.auth.ssh_timeout_s, cancel=self.cancel)
            else:
                self.runner.wait_ready(self.config.auth.ssh_timeout_s)
            self._check_cancel()
            node_dir = self._prepare_node_dir()
        except (ClusterError, OSError) as error:
            raise _StageFailed(str(error), f"{self.stage}: {error}") from error
        corral_env = None
        if self.probe is not None:
            corral_env = ACTIVE_ENV_SHELL  # config only: no command runs anyway
            if not self.steps.config_only:
                self._enter(STATUS_SHIPPING_CORRAL)
                corral_env = self._guard(self._ship).env_dir
        self.env = self.context.node_env(self.node, node_dir, corral_env)
        self.node_dir = node_dir
        if self.steps.sync_files or self.steps.config_only:
            self._enter(STATUS_SYNCING_FILES)
            self._guard(self._sync_files)
        if self.steps.run_setup:
            self._enter(STATUS_SETTING_UP)
            self._run_commands(self._setup_commands())
        self._await_private_files()
        self._check_cancel()
        if self.steps.run_start:
            self._enter(STATUS_STARTING)
            self._run_commands(self._start_commands())
        self._advance(STATUS_UP_TO_DATE)
        self.stage = STATUS_UP_TO_DATE
        tags = {TAG_NODE_STATUS: STATUS_UP_TO_DATE, TAG_FAILURE: "",
                TAG_LAUNCH_HASH: self.hashes.launch, TAG_RUNTIME_HASH: self.hashes.runtime,
                TAG_RUNTIME_PARTS: self.hashes.runtime_parts}
        if self.hashes.config:
            tags[TAG_CONFIG_HASH] = self.hashes.config
        self._guard(lambda: self.tags.finish(tags))

    def _prepare_node_dir(self) -> str:
        """The node dir. A node corral ships to is probed (one round trip: the node dir
        is made and the node's platform learnt). Otherwise it is known from the runner's
        environment (the process provider sets it; every stage script creates it) or
        asked once from the node."""
        if self.context.shipper is not None and ships_to(self.runner):
            result = self.runner.run(probe_command(DEFAULT_NODE_DIR), timeout_s=60,
                                     log_path=self.log_path)
            if not result.ok:
                raise ClusterError(f"could not prepare {self.runner.host} (probe exited "
                                   f"{result.exit_code}): {result.tail(5)}")
            self.probe = parse_probe(self.runner.host, result.stdout or "")
            return self.probe.node_dir
        known = known_node_dir(self.runner)
        if known:
            return known
        result = self.runner.run(resolve_node_dir_command(), timeout_s=60,
                                 log_path=self.log_path)
        lines = (result.stdout or "").strip().splitlines()
        if not result.ok or not lines:
            raise ClusterError(f"could not create the node directory on {self.runner.host}: "
                               f"{result.tail(5) or f'exit {result.exit_code}'}")
        return lines[-1].strip()

    def _ship(self):
        """Install the corral that runs here on the node, unless it has it already."""
        def notify(text: str) -> None:
            self._notify(STATUS_SHIPPING_CORRAL, text)
        self.shipped = self.context.shipper.ship(self.runner, self.probe, self.node.kind,
                                                 log_path=self.log_path, notify=notify,
                                                 cancel=self.cancel)
        notify(self.shipped.describe())
        return self.shipped

    def _sync_files(self) -> None:
        exclude = list(self.config.rsync_exclude)
        if not self.steps.config_only:
            for remote, local in self.config.file_mounts.items():
                self.runner.put(os.path.expanduser(local), remote, exclude=exclude)
            if self.is_head:
                for source, copy in self.context.head_copies(self.node_dir).values():
                    self.runner.put(source, copy, exclude=exclude)
        # Our own files (keys, the head's config) are needed only by the start commands:
        # they travel in the background while setup runs (see _await_private_files).
        self._private_sync = _Background(self._put_private_files)

    def _put_private_files(self) -> None:
        """Keys, and for the head its config and SSH key, in one transfer from a private
        (0700) staging directory, already 0600 (modes are kept on the node)."""
        with tempfile.TemporaryDirectory(prefix="corral-node-") as staging:
            if self.context.keys_dir and not self.steps.config_only:
                for name in sorted(os.listdir(self.context.keys_dir)):
                    with open(os.path.join(self.context.keys_dir, name), "rb") as handle:
                        paths.write_private(os.path.join(staging, "keys", name), handle.read())
            if self.is_head:
                document = self.context.head_document(self.node_dir)
                paths.write_private(os.path.join(staging, "cluster.yaml"),
                                    yaml.safe_dump(document, sort_keys=False))
                key_path = head_ssh_key(self.config)
                if key_path and document["auth"].get("ssh_private_key") != key_path:
                    with open(os.path.expanduser(key_path), "rb") as handle:
                        paths.write_private(os.path.join(staging, "ssh_key"), handle.read())
            if os.listdir(staging):
                try:
                    self.runner.put(staging, self.node_dir)
                except (ClusterError, OSError):
                    # Idempotent (unchanged files are skipped): one more try rides out a
                    # dropped connection, which the runner re-opens.
                    self.runner.put(staging, self.node_dir)

    def _await_private_files(self) -> None:
        background, self._private_sync = self._private_sync, None
        if background is None:
            return
        error = background.wait()
        if error is not None:
            self.stage = STATUS_SYNCING_FILES
            text = str(error) or type(error).__name__
            raise _StageFailed(f"copying the cluster keys/config failed: {text}",
                               f"{STATUS_SYNCING_FILES}: {text}") from error

    def _setup_commands(self) -> list[str]:
        kind_setup = (self.config.head_setup_commands if self.is_head
                      else self.config.worker_setup_commands)
        return [*self.config.initialization_commands, *self.config.setup_commands,
                *kind_setup]

    def _start_commands(self) -> list[str]:
        return list(self.config.head_start_commands if self.is_head
                    else self.config.worker_start_commands)

    def _run_commands(self, commands: list[str]) -> None:
        failure = self._guard(lambda: run_batch(self.runner, commands, env=self.env,
                                                log_path=self.log_path,
                                                timeout_s=self.command_timeout_s,
                                                prelude=NODE_DIR_PRELUDE,
                                                cancel=self.cancel))
        self._check_cancel()
        if failure is None:
            return
        message = f"`{failure.command}` exited {failure.exit_code}"
        detail = message
        if failure.output_tail:
            detail += "; last output:\n    " + failure.output_tail.replace("\n", "\n    ")
        raise _StageFailed(detail, f"{self.stage}: {message}")

    # -- helpers ------------------------------------------------------------------------
    def _guard(self, action):
        try:
            return action()
        except (ClusterError, OSError) as error:
            raise _StageFailed(str(error), f"{self.stage}: {error}") from error

    def _check_cancel(self) -> None:
        """Between stages and commands: stop here once the user interrupted `up`."""
        if self.cancel is not None and self.cancel.is_set():
            raise _StageFailed("interrupted", f"{self.stage}: interrupted")

    def _enter(self, stage: str) -> None:
        self._check_cancel()
        self._advance(stage)
        self.stage = stage
        self._notify(stage, "")
        self.tags.set({TAG_NODE_STATUS: stage})

    def _advance(self, stage: str) -> None:
        """Refuse (NodeStateError) a stage the state table does not allow after the
        last one recorded, before anything is written."""
        check_stage_transition(self.node.id, self.recorded_stage, stage)
        self.recorded_stage = stage

    def _notify(self, stage: str, detail: str) -> None:
        if self.on_stage is not None:
            self.on_stage(self.node.id, stage, detail)

    def _record_failure(self, tag_text: str) -> None:
        text = " ".join(tag_text.split())
        if len(text) > FAILURE_TAG_MAX_CHARS:
            text = text[:FAILURE_TAG_MAX_CHARS - 3] + "..."
        self._advance(STATUS_UPDATE_FAILED)
        try:
            self.tags.finish({TAG_NODE_STATUS: STATUS_UPDATE_FAILED, TAG_FAILURE: text})
        except (ClusterError, OSError) as error:
            # The node may be unreachable for tags too; the outcome still carries the error.
            self._notify(STATUS_UPDATE_FAILED, f"could not record the failure: {error}")


def bootstrap_node(provider: NodeProvider, node: Node, context: ClusterContext,
                   steps: BootstrapSteps = FULL, *, on_stage: StageCallback | None = None,
                   command_timeout_s: float | None = None,
                   cancel: threading.Event | None = None) -> BootstrapOutcome:
    """Run the bootstrap state machine on one node; never raises for a node failure
    (the outcome carries the BootstrapError). Setting `cancel` stops it at the next
    stage or command (the running command is stopped): update-failed, "interrupted"."""
    return NodeBootstrap(provider, node, context, steps, on_stage=on_stage,
                         command_timeout_s=command_timeout_s, cancel=cancel).run()
