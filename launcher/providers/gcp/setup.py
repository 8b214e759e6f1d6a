"""Cloud set-up of a gcp cluster (`GCPProvider.bootstrap`), idempotent, and its undoing
(`GCPProvider.purge`).

bootstrap: the cluster's SSH key pair (kept in ~/.corral/clusters/<name>/ssh-key, 0600;
public half in every node's `ssh-keys` metadata), two firewall rules on the cluster's
network tag (all traffic between the cluster's nodes; SSH only from ssh_ingress_cidrs),
the head's service account (see iam_setup) unless provider.service_account names one,
the default boot image resolved from its family, and node resources from machineTypes.get.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Mapping

from launcher import paths
from launcher.errors import ConfigError, ProviderAuthError
from launcher.config.frozen import thaw
from launcher.providers import cloud_common
from launcher.providers.gcp import iam_setup, naming
from launcher.providers.gcp.client import SCOPES, GCEClient
from launcher.providers.gcp.instance_body import DEFAULT_IMAGE, default_disks, machine_type_name

FAMILY_MARK = "/global/images/family/"


def ssh_key_pair(config) -> tuple[str, str]:
    """(private key path, OpenSSH public key line): the user's key from auth.ssh_private_key,
    else the cluster's own, generated once (ed25519)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    path = config.auth.ssh_private_key or str(naming.private_key_path(config.cluster_name))
    try:
        with open(path, "rb") as handle:
            private = serialization.load_ssh_private_key(handle.read(), password=None)
    except FileNotFoundError:
        if config.auth.ssh_private_key:
            raise ConfigError("auth.ssh_private_key", None, f"no such file: {path}",
                              source=config.source_path) from None
        private = ed25519.Ed25519PrivateKey.generate()
        paths.write_private(path, private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()))
    except ValueError as error:
        raise ConfigError("auth.ssh_private_key", None, f"cannot read {path}: {error}",
                          source=config.source_path) from None
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return path, public


def firewall_rules(config) -> list[dict[str, Any]]:
    """The cluster's firewall rules as instances of the Firewall resource."""
    provider = config.provider
    network = naming.network_url(provider, provider["project_id"])
    tag = naming.network_tag(config.cluster_name)
    names = naming.firewall_names(config.cluster_name)
    rules = [{"name": names["internal"], "network": network, "direction": "INGRESS",
              "priority": 1000, "sourceTags": [tag], "targetTags": [tag],
              "allowed": [{"IPProtocol": "all"}],
              "description": f"corral cluster {config.cluster_name}: traffic between its nodes"}]
    cidrs = list(provider.get("ssh_ingress_cidrs") or [])
    if cidrs:
        rules.append({"name": names["ssh"], "network": network, "direction": "INGRESS",
                      "priority": 1000, "sourceRanges": cidrs, "targetTags": [tag],
                      "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
                      "description": f"corral cluster {config.cluster_name}: SSH from "
                                     "provider.ssh_ingress_cidrs"})
    return rules


def _differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return any(current.get(key) != value for key, value in wanted.items()
               if key not in ("network", "name"))


def ensure_firewalls(client: GCEClient, config, timeout_s: float) -> None:
    project = client.project
    firewalls = lambda: client.compute.firewalls()  # noqa: E731
    for rule in firewall_rules(config):
        name = rule["name"]
        current = client.execute(lambda: firewalls().get(project=project, firewall=name),
                                 what=f"reading firewall rule {name}", not_found_ok=True)
        if current is None:
            operation = client.execute(lambda: firewalls().insert(project=project, body=rule),
                                       what=f"creating firewall rule {name}")
        elif _differs(current, rule):
            operation = client.execute(
                lambda: firewalls().patch(project=project, firewall=name, body=rule),
                what=f"updating firewall rule {name}")
        else:
            continue
        client.wait_operation(operation, timeout_s=timeout_s, what=f"firewall rule {name}")


def resolve_image(client: GCEClient, image: str, cluster_name: str) -> str:
    """A family URL -> an image of that family, pinned per cluster.

    The first `up` asks images.getFromFamily for the family's current image and records it
    in ~/.corral/clusters/<name>/image-pins.json; later ups reuse it, so a new release in
    the family neither changes the launch hash (which would replace every node) nor mixes
    images inside one cluster. `down --purge` forgets the pin."""
    if FAMILY_MARK not in image:
        return image
    pins_path = naming.image_pins_path(cluster_name)
    try:
        pins = json.loads(pins_path.read_text())
    except (FileNotFoundError, ValueError):
        pins = {}
    if isinstance(pins, dict) and isinstance(pins.get(image), str):
        return pins[image]
    project = image.split("projects/", 1)[1].split("/", 1)[0]
    family = image.rsplit("/", 1)[1]
    found = client.execute(lambda: client.compute.images().getFromFamily(
        project=project, family=family), what=f"looking up image family {family}")
    pins = {**(pins if isinstance(pins, dict) else {}), image: found["selfLink"]}
    paths.write_private(pins_path, json.dumps(pins, indent=2, sort_keys=True) + "\n")
    return found["selfLink"]


def _with_ssh_key(node_config: dict, ssh_user: str, public_key: str, cluster_name: str) -> None:
    line = f"{ssh_user}:{public_key} corral-{cluster_name}"
    metadata = node_config.setdefault("metadata", {})
    items = [item for item in metadata.get("items") or [] if item.get("key") != "ssh-keys"]
    old = next((item.get("value", "") for item in metadata.get("items") or []
                if item.get("key") == "ssh-keys"), "")
    kept = [entry for entry in old.splitlines() if entry.strip() and entry != line]
    items.append({"key": "ssh-keys", "value": "\n".join([*kept, line])})
    metadata["items"] = items


def node_resources_describer(client: GCEClient, zone: str, accelerators_of: dict[str, float]
                             ) -> Callable[[list[str]], Mapping[str, Mapping]]:
    """For cloud_common.fill_node_resources: keys are `machine` or `machine+gpus`."""
    def describe(keys: list[str]) -> dict[str, dict[str, float]]:
        described = {}
        for key in keys:
            machine = key.split("+", 1)[0]
            found = client.execute(lambda: client.compute.machineTypes().get(
                project=client.project, zone=zone, machineType=machine),
                what=f"describing machine type {machine}", not_found_ok=True)
            if found is None:
                continue
            gpus = sum(float(item.get("guestAcceleratorCount", 0))
                       for item in found.get("accelerators") or [])
            described[key] = cloud_common.resources_from_shape(
                found["guestCpus"], found["memoryMb"], gpus + accelerators_of.get(key, 0))
        return described
    return describe


def fill_resources(client: GCEClient, config):
    zone = naming.zones(config.provider)[0]
    accelerators_of: dict[str, float] = {}

    def key_of(node_config: Mapping) -> str | None:
        machine = machine_type_name(node_config)
        if not machine:
            return None
        gpus = sum(float(item.get("acceleratorCount", 0))
                   for item in node_config.get("guestAccelerators") or [])
        key = f"{machine}+{gpus:g}" if gpus else machine
        accelerators_of[key] = gpus
        return key
    return cloud_common.fill_node_resources(config, key_of,
                                            node_resources_describer(client, zone, accelerators_of),
                                            machine_type_key="machineType")


def _head_identity(client: GCEClient, project: str) -> str:
    try:
        return iam_setup.ensure_head_identity(client, project)
    except ProviderAuthError as error:
        raise ProviderAuthError(
            f"{error}\nCreating the head's least-privilege service account needs IAM rights "
            "(roles/iam.roleAdmin, roles/iam.serviceAccountAdmin and "
            "resourcemanager.projects.setIamPolicy). Without them, set "
            "provider.service_account to an existing account the head may use.",
            cause=error.cause) from None


def bootstrap_gcp(config, client: GCEClient | None = None):
    provider = config.provider
    if not provider.get("use_internal_ips") and not provider.get("ssh_ingress_cidrs"):
        raise ConfigError("provider.ssh_ingress_cidrs", None,
                          "list the networks you connect from (e.g. [203.0.113.7/32]); "
                          "corral opens SSH to nothing else", source=config.source_path)
    client = client or GCEClient(provider)
    timeout_s = float(provider.get("operation_timeout_s", 300))
    key_path, public_key = ssh_key_pair(config)
    ssh_user = config.auth.ssh_user or "ubuntu"
    ensure_firewalls(client, config, timeout_s)
    cloud_common.ssh_open_notice(provider.get("ssh_ingress_cidrs") or [],
                                 f"cluster {config.cluster_name}")
    head_config = config.available_node_types[config.head_node_type].node_config
    head_account = provider.get("service_account")
    if not head_account and "serviceAccounts" not in head_config:
        head_account = _head_identity(client, provider["project_id"])
    need_image = any(not node_type.node_config.get("disks")
                     for node_type in config.available_node_types.values())
    image = (resolve_image(client, str(provider.get("image") or DEFAULT_IMAGE), config.cluster_name)
             if need_image else None)
    node_types = {}
    for name, node_type in config.available_node_types.items():
        node_config = thaw(node_type.node_config)
        _with_ssh_key(node_config, ssh_user, public_key, config.cluster_name)
        if not node_config.get("disks"):
            node_config["disks"] = default_disks(image)
        if name == config.head_node_type and head_account:
            node_config.setdefault("serviceAccounts",
                                   [{"email": head_account, "scopes": list(SCOPES)}])
        else:
            node_config.setdefault("serviceAccounts", [])
        node_types[name] = dataclasses.replace(node_type, node_config=node_config)
    config = config.replace(available_node_types=node_types,
                            auth=dataclasses.replace(config.auth, ssh_private_key=key_path,
                                                     ssh_user=ssh_user))
    return fill_resources(client, config)


def purge_gcp(config, client: GCEClient | None = None) -> list[str]:
    """Remove everything corral made for this cluster: any node still there, its firewall
    rules and the cluster's own SSH key pair (never a key the user named). The
    project-wide role and head service account stay: other clusters share them.
    Returns one line per removed thing."""
    from launcher.providers.gcp.node_provider import GCPProvider
    client = client or GCEClient(config.provider)
    timeout_s = float(config.provider.get("operation_timeout_s", 300))
    removed = []
    provider = GCPProvider(config, client=client)
    left = [node.id for node in provider.non_terminated_nodes()]
    if left:
        provider.terminate_nodes(left)
        removed.extend(f"instance {node_id}" for node_id in left)
    for name in naming.firewall_names(config.cluster_name).values():
        operation = client.execute(lambda: client.compute.firewalls().delete(
            project=client.project, firewall=name), what=f"deleting firewall rule {name}",
            not_found_ok=True)
        if operation is not None:
            client.wait_operation(operation, timeout_s=timeout_s, what=f"deleting {name}")
            removed.append(f"firewall rule {name}")
    key_path = naming.private_key_path(config.cluster_name)
    if key_path.exists():  # the managed key's own path: a user's key lives elsewhere
        key_path.unlink()
        removed.append(f"ssh key {key_path}")
    pins_path = naming.image_pins_path(config.cluster_name)
    if pins_path.exists():
        pins_path.unlink()
        removed.append(f"image pin {pins_path}")
    return removed
