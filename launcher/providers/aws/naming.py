"""Names of the AWS resources corral makes for one cluster, in one place so that
bootstrap creates and `down --purge` removes exactly the same things."""
from __future__ import annotations

from pathlib import Path

from launcher import paths
from launcher.providers.cloud_common import cluster_resource_name
from launcher.tags import TAG_CLUSTER_NAME

PRIVATE_KEY_FILE = "ssh-key.pem"
ROLE_POLICY_NAME = "corral-autoscaler"


def key_pair_name(cluster_name: str) -> str:
    return cluster_resource_name("corral", cluster_name, max_length=255)


def security_group_name(config) -> str:
    override = config.provider.get("security_group")
    if override and not override.startswith("sg-"):
        return override
    return cluster_resource_name("corral", config.cluster_name, max_length=255)


def head_profile_name(cluster_name: str, region: str) -> str:
    """IAM is global, so the region is part of the name (one cluster name per region)."""
    return cluster_resource_name("corral-head", cluster_name, region, max_length=64)


def private_key_path(cluster_name: str) -> Path:
    return paths.cluster_dir(cluster_name) / PRIVATE_KEY_FILE


def cluster_tags(cluster_name: str) -> list[dict[str, str]]:
    return [{"Key": TAG_CLUSTER_NAME, "Value": cluster_name}]


def tag_specification(resource_type: str, cluster_name: str) -> dict:
    return {"ResourceType": resource_type, "Tags": cluster_tags(cluster_name)}


def has_cluster_tag(resource: dict, cluster_name: str) -> bool:
    return any(tag.get("Key") == TAG_CLUSTER_NAME and tag.get("Value") == cluster_name
               for tag in resource.get("Tags") or [])


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"
