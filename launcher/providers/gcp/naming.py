"""Names of the GCE/IAM resources corral makes for one cluster, in one place so that
bootstrap creates and `down --purge` removes exactly the same things."""
from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any, Mapping

from launcher import paths
from launcher.providers.cloud_common import cluster_resource_name, zone_list

PRIVATE_KEY_FILE = "ssh-key"
IMAGE_PINS_FILE = "image-pins.json"
# One custom role and one head service account per project, shared by its clusters.
ROLE_ID = "corralAutoscaler"
HEAD_ACCOUNT_ID = "corral-head"
DEFAULT_NETWORK = "default"


def gce_name(text: str) -> str:
    """`text` made into a valid GCE resource name piece: lowercase, [a-z0-9-]."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned or "cluster"


def network_tag(cluster_name: str) -> str:
    """The network tag every node of the cluster carries; firewall rules target it."""
    return cluster_resource_name("corral", gce_name(cluster_name), max_length=63)


def firewall_names(cluster_name: str) -> dict[str, str]:
    base = gce_name(cluster_name)
    return {"internal": cluster_resource_name("corral", base, "internal", max_length=63),
            "ssh": cluster_resource_name("corral", base, "ssh", max_length=63)}


def instance_name(cluster_name: str, kind: str) -> str:
    """A new, unique instance name: corral-<cluster>-<kind>-<8 hex>, at most 63 chars."""
    suffix = f"{kind[:6]}-{secrets.token_hex(4)}"
    prefix = cluster_resource_name("corral", gce_name(cluster_name), max_length=63 - len(suffix) - 1)
    name = f"{prefix}-{suffix}"
    return name if name[0].isalpha() else "c" + name[1:]


def private_key_path(cluster_name: str) -> Path:
    return paths.cluster_dir(cluster_name) / PRIVATE_KEY_FILE


def image_pins_path(cluster_name: str) -> Path:
    return paths.cluster_dir(cluster_name) / IMAGE_PINS_FILE


def zones(provider: Mapping[str, Any]) -> list[str]:
    """The provider's zones in order of preference (default: <region>-a)."""
    return zone_list(provider.get("availability_zone")) or [f"{provider['region']}-a"]


def network_url(provider: Mapping[str, Any], project: str) -> str:
    network = str(provider.get("network") or DEFAULT_NETWORK)
    if "/" in network:
        return network if network.startswith(("projects/", "http")) else f"projects/{project}/{network}"
    return f"projects/{project}/global/networks/{network}"


def role_name(project: str) -> str:
    return f"projects/{project}/roles/{ROLE_ID}"


def head_account_email(project: str) -> str:
    return f"{HEAD_ACCOUNT_ID}@{project}.iam.gserviceaccount.com"
