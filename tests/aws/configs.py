"""AWS cluster configs for the tests, built through the real config loader (defaults from
configs/defaults/aws.yaml, validation against schemas/provider-aws.schema.json)."""
from __future__ import annotations

import copy

from launcher.config.load import normalize
from tests.aws.moto_server import REGION, seed_public_parameter

TEST_IMAGE_ID = "ami-0123456789abcdef0"  # moto does not check that an AMI exists
UBUNTU_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")
HEAD_TYPE = "head"
WORKER_TYPE = "cpu"
GPU_TYPE = "gpu"


def aws_document(cluster_name: str, *, provider: dict | None = None,
                 node_types: dict | None = None, auth: dict | None = None) -> dict:
    document = {
        "cluster_name": cluster_name,
        "max_workers": 20,
        "provider": {"type": "aws", "region": REGION,
                     "availability_zone": ["us-west-2a", "us-west-2b"],
                     "ssh_ingress_cidrs": ["198.51.100.0/24"], **(provider or {})},
        "available_node_types": node_types or {
            HEAD_TYPE: {"node_config": {"InstanceType": "t3.medium"}, "max_workers": 0},
            WORKER_TYPE: {"node_config": {"InstanceType": "t3.micro"}, "max_workers": 20},
            GPU_TYPE: {"node_config": {"InstanceType": "g4dn.xlarge"}, "max_workers": 2},
        },
        "head_node_type": HEAD_TYPE,
    }
    if auth:
        document["auth"] = auth
    return copy.deepcopy(document)


def aws_config(cluster_name: str, **kwargs):
    return normalize(aws_document(cluster_name, **kwargs))


def publish_ubuntu_image(image_id: str = TEST_IMAGE_ID) -> str:
    """What AWS publishes for real: the current Ubuntu LTS image under its SSM name."""
    seed_public_parameter(UBUNTU_PARAMETER, image_id)
    return image_id
