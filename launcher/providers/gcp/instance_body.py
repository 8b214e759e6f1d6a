"""node_config -> the body of instances.insert for one node in one zone.

The user's node_config is passed through; corral adds the name, zone-qualified URLs
(machineType, acceleratorType, diskType) so one node type works in every zone of the
fallback list, a default boot disk and network interface, its labels, the cluster's
network tag (which the firewall rules target) and spot/preemptible scheduling defaults.
"""
from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from launcher.config.frozen import thaw
from launcher.providers.gcp import naming
from launcher.providers.gcp.labels import OVERFLOW_METADATA_KEY

DEFAULT_IMAGE = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
DEFAULT_DISK_SIZE_GB = 50
_ZONED = re.compile(r"zones/[^/]+/(machineTypes|acceleratorTypes|diskTypes)/")


def in_zone(value: str, zone: str, collection: str) -> str:
    """`n2-standard-4` or `zones/<any>/machineTypes/n2-standard-4` -> `zones/<zone>/...`."""
    if "/" not in value:
        return f"zones/{zone}/{collection}/{value}"
    return _ZONED.sub(lambda match: f"zones/{zone}/{match.group(1)}/", value)


def default_disks(image: str) -> list[dict[str, Any]]:
    return [{"boot": True, "autoDelete": True, "type": "PERSISTENT",
             "initializeParams": {"sourceImage": image, "diskSizeGb": str(DEFAULT_DISK_SIZE_GB)}}]


def default_interfaces(provider: Mapping[str, Any], project: str) -> list[dict[str, Any]]:
    interface: dict[str, Any] = {"network": naming.network_url(provider, project)}
    if not provider.get("use_internal_ips"):
        interface["accessConfigs"] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]
    return [interface]


def machine_type_name(node_config: Mapping[str, Any]) -> str | None:
    value = node_config.get("machineType")
    return str(value).rsplit("/", 1)[-1] if value else None


def _scheduling(body: dict[str, Any]) -> None:
    scheduling = dict(body.get("scheduling") or {})
    spot = str(scheduling.get("provisioningModel", "")).upper() == "SPOT"
    if spot:
        scheduling.setdefault("instanceTerminationAction", "DELETE")
    if spot or scheduling.get("preemptible"):
        scheduling.setdefault("automaticRestart", False)
        scheduling.setdefault("onHostMaintenance", "TERMINATE")
    if body.get("guestAccelerators"):
        scheduling.setdefault("onHostMaintenance", "TERMINATE")
    if scheduling:
        body["scheduling"] = scheduling


def instance_body(node_config: Mapping[str, Any], *, name: str, zone: str,
                  provider: Mapping[str, Any], cluster_name: str,
                  labels: Mapping[str, str], overflow_json: str | None = None) -> dict[str, Any]:
    body = copy.deepcopy(thaw(node_config))
    project = provider["project_id"]
    body["name"] = name
    if not body.get("machineType"):
        raise ValueError("node_config.machineType is required for gcp node types")
    body["machineType"] = in_zone(str(body["machineType"]), zone, "machineTypes")
    for accelerator in body.get("guestAccelerators") or []:
        if accelerator.get("acceleratorType"):
            accelerator["acceleratorType"] = in_zone(str(accelerator["acceleratorType"]), zone,
                                                     "acceleratorTypes")
    if not body.get("disks"):
        body["disks"] = default_disks(str(provider.get("image") or DEFAULT_IMAGE))
    for disk in body["disks"]:
        params = disk.get("initializeParams") or {}
        if params.get("diskType"):
            params["diskType"] = in_zone(str(params["diskType"]), zone, "diskTypes")
    if not body.get("networkInterfaces"):
        body["networkInterfaces"] = default_interfaces(provider, project)
    body["labels"] = dict(labels)
    if overflow_json:  # tags that do not fit in labels (see labels.split_tags)
        metadata = body.setdefault("metadata", {})
        metadata["items"] = [item for item in metadata.get("items") or []
                             if item.get("key") != OVERFLOW_METADATA_KEY]
        metadata["items"].append({"key": OVERFLOW_METADATA_KEY, "value": overflow_json})
    network_tags = list((body.get("tags") or {}).get("items") or [])
    tag = naming.network_tag(cluster_name)
    if tag not in network_tags:
        network_tags.append(tag)
    body["tags"] = {"items": network_tags}
    _scheduling(body)
    return body
