"""What the bootstraps of one cluster share: where the head is, the environment every
command on a node gets (the common contract), the hashes a node should carry, the config
and file-mount copies the head keeps for its autoscaler, and (SSH providers) the Shipper
that gives nodes the corral that runs here."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping

from launcher.bootstrap.hashing import (config_hash, encode_parts, file_mounts_digest, hash_of_parts,
                              launch_hash, runtime_parts, tree_digest)
from launcher.providers.base import Capability, Node, NodeProvider
from launcher.tags import KIND_HEAD, TAG_HEAD_PORT

DEFAULT_NODE_DIR = "/tmp/corral"

DEFAULT_HEAD_PORT = 6390


@dataclasses.dataclass(frozen=True)
class NodeHashes:
    launch: str
    runtime: str
    config: str | None  # head only
    runtime_parts: str = ""  # TAG_RUNTIME_PARTS: says which part of `runtime` changed


def head_port_of(provider: NodeProvider, head: Node | None) -> int:
    """The head's runtime port: the provider's choice (its tag, or Capability.HEAD_PORT),
    else 6390."""
    if head is not None and head.tags.get(TAG_HEAD_PORT):
        return int(head.tags[TAG_HEAD_PORT])
    port = provider.head_port() if provider.supports(Capability.HEAD_PORT) else None
    return int(port) if port else DEFAULT_HEAD_PORT


def node_ip(node: Node) -> str | None:
    return node.internal_ip or node.external_ip


@dataclasses.dataclass(frozen=True)
class ClusterContext:
    """What the bootstraps of one cluster share, computed once (checksums included)."""
    config: object  # ClusterConfig
    head_ip: str
    head_port: int
    keys_dir: str | None
    mounts_digest: Mapping[str, str]
    keys_digest: str | None
    # SSH providers: the running corral's code digest (part of the runtime hash, so a
    # new corral is shipped and restarted) and the Shipper. None for `process`, whose
    # nodes run this machine's corral.
    corral_digest: str | None = None
    shipper: object | None = None  # launcher.ship.stage.Shipper

    @classmethod
    def build(cls, config, head_ip: str, head_port: int,
              keys_dir: str | None = None) -> "ClusterContext":
        has_keys = bool(keys_dir and os.path.isdir(keys_dir) and os.listdir(keys_dir))
        corral_digest = shipper = None
        if config.provider_type != "process":
            from launcher.ship.stage import Shipper, corral_digest as digest_of_corral
            corral_digest = digest_of_corral()
            shipper = Shipper(config.provider_type)
        return cls(config=config, head_ip=head_ip, head_port=int(head_port),
                   keys_dir=keys_dir if has_keys else None,
                   mounts_digest=file_mounts_digest(config),
                   keys_digest=tree_digest(keys_dir) if has_keys else None,
                   corral_digest=corral_digest, shipper=shipper)

    def runtime_parts(self, node_kind: str, node_type: str) -> dict[str, str]:
        return runtime_parts(self.config, node_kind, node_type, head_ip=self.head_ip,
                             head_port=self.head_port, mounts_digest=self.mounts_digest,
                             keys_digest=self.keys_digest, corral_digest=self.corral_digest)

    def hashes(self, node_kind: str, node_type: str) -> NodeHashes:
        config = self.config
        parts = self.runtime_parts(node_kind, node_type)
        return NodeHashes(
            launch=launch_hash(config, node_type),
            runtime=hash_of_parts(parts),
            config=config_hash(config.to_dict()) if node_kind == KIND_HEAD else None,
            runtime_parts=encode_parts(parts))

    def node_env(self, node: Node, node_dir: str,
                 corral_env: str | None = None) -> dict[str, str]:
        """The environment every command on `node` gets (the common contract). With
        `corral_env` (a node corral was shipped to: its environment's path, or
        launcher.ship.layout.ACTIVE_ENV_SHELL) also CORRAL_ENV and PATH with the
        environment's bin directory first."""
        node_type = self.config.available_node_types.get(node.node_type)
        resources = dict(node_type.resources) if node_type else {}
        env = {
            "CORRAL_CLUSTER_NAME": self.config.cluster_name,
            "CORRAL_NODE_ID": node.id,
            "CORRAL_NODE_TYPE": node.node_type,
            "CORRAL_NODE_KIND": node.kind,
            "CORRAL_HEAD_IP": self.head_ip,
            "CORRAL_HEAD_PORT": str(self.head_port),
            "CORRAL_NODE_RESOURCES": json.dumps(resources, sort_keys=True),
            "CORRAL_NODE_DIR": node_dir,
        }
        if corral_env:
            from launcher.ship.layout import ACTIVE_ENV_SHELL, node_env_vars
            env.update(node_env_vars(None if corral_env == ACTIVE_ENV_SHELL else corral_env))
        return env

    def head_copies(self, node_dir: str) -> dict[str, tuple[str, str]]:
        """{remote path: (local source, its copy on the head)} for every file mount. The
        head's autoscaler bootstraps new workers from these copies (the laptop's paths do
        not exist there). None are needed when the head runs on this machine (process)."""
        if self.config.provider_type == "process":
            return {}
        copies = {}
        for index, (remote, local) in enumerate(sorted(self.config.file_mounts.items())):
            source = os.path.expanduser(local)
            copy = f"{node_dir}/mounts/{index}"
            if os.path.isfile(source):
                copy += "/" + os.path.basename(source.rstrip("/"))
            copies[remote] = (source, copy)
        return copies

    def head_document(self, node_dir: str) -> dict:
        """The normalised config as the head reads it. On SSH providers the head needs
        the SSH key to reach new workers (it travels with the config, 0600) and reads the
        file mounts from its own copies."""
        document = self.config.to_dict()
        # A service-account key file is a path on the machine that ran `up`: the head
        # authenticates as its own service account instead (gcp/client.py falls back to
        # the instance's credentials when no file is named).
        document["provider"].pop("credentials_file", None)
        if self.config.provider_type != "process" and head_ssh_key(self.config):
            document["auth"]["ssh_private_key"] = f"{node_dir}/ssh_key"
        for remote, (_, copy) in self.head_copies(node_dir).items():
            document["file_mounts"][remote] = copy
        return document


def head_ssh_key(config) -> str | None:
    """The key file the head reaches workers with (it travels to the head as ssh_key,
    0600): auth.ssh_private_key when the YAML names one; else, on the local provider,
    the key this machine's SSH set-up gives the head host (the first IdentityFile of
    ~/.ssh/config, or ssh's default ~/.ssh/id_*, that exists and has no passphrase).
    None when there is no such file (keys only in ssh-agent): the head then has no key,
    which `corral validate` says."""
    if config.auth.ssh_private_key:
        return config.auth.ssh_private_key
    if config.provider_type != "local" or not config.provider.get("head_ip"):
        return None
    from launcher.ssh import user_config as ssh_config
    from launcher.errors import ClusterError
    from launcher.ssh.keyfile import read_key_facts
    try:
        spec = ssh_config.resolve(config.provider["head_ip"], known_hosts_path=os.devnull,
                                  user=config.auth.ssh_user)
    except ClusterError:
        return None
    for path in spec.identity_files:
        try:
            if os.path.isfile(path) and not read_key_facts(path).encrypted:
                return path
        except (OSError, ValueError):
            continue
    return None


def known_node_dir(runner) -> str | None:
    """The node dir when the runner's own environment names it (the process provider's
    LocalRunner and the local provider's SSHRunner do); None when it must be asked."""
    base_env = getattr(runner, "base_env", None)
    if isinstance(base_env, Mapping):
        return base_env.get("CORRAL_NODE_DIR") or None
    return None
