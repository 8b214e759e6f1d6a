"""`AWSProvider.bootstrap(config)`: per-cluster cloud set-up, idempotent.

Fills in what each node type's `node_config` needs for RunInstances — KeyName, ImageId
(current Ubuntu LTS from a public SSM parameter), SubnetIds (ordered by zone preference),
SecurityGroupIds, the head's IamInstanceProfile — plus auth.ssh_private_key and the node
types' resources, creating the key pair, security group and head instance profile when
missing. Values the user wrote are never overwritten.
"""
from __future__ import annotations

import dataclasses

from botocore.exceptions import ClientError

from launcher.errors import ConfigError
from launcher.config.frozen import thaw
from launcher.providers.aws import iam as aws_iam
from launcher.providers.aws import keys, network
from launcher.providers.aws.errors import aws_errors, error_code
from launcher.providers.aws.session import AWSClients
from launcher.providers.cloud_common import fill_node_resources as fill_resources
from launcher.providers.cloud_common import resources_from_shape

DEFAULT_IMAGE_PARAMETER = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")
DEFAULT_SSH_USER = "ubuntu"
NETWORK_KEYS = ("SubnetId", "SubnetIds", "NetworkInterfaces")


def bootstrap_cluster(config, clients: AWSClients | None = None):
    """A new ClusterConfig with the cluster's AWS resources in place and filled in."""
    clients = clients or AWSClients(config.provider["region"])
    ec2 = clients.ec2
    vpc = network.find_vpc(ec2, config)
    if not (config.provider.get("security_group") or "").startswith("sg-"):
        network.ssh_ingress_cidrs(config, vpc)  # a config error stops us before creating
    subnets = network.choose_subnets(ec2, config, vpc)
    group_id = network.ensure_security_group(ec2, config, vpc)
    key_name, private_key = keys.ensure_key_pair(ec2, config)
    image_id = _LazyImage(clients, config)
    head_profile = _head_profile(clients, config, group_id, key_name)
    worker_profile = config.provider.get("worker_iam_instance_profile")

    node_types = {}
    for name, node_type in config.available_node_types.items():
        node_config = thaw(node_type.node_config)
        node_config.setdefault("KeyName", key_name)
        if "ImageId" not in node_config:
            node_config["ImageId"] = image_id.get()
        if not any(key in node_config for key in NETWORK_KEYS):
            node_config["SubnetIds"] = [subnet_id for subnet_id, _ in subnets]
        if "SecurityGroupIds" not in node_config and "NetworkInterfaces" not in node_config:
            node_config["SecurityGroupIds"] = [group_id]
        profile = head_profile if name == config.head_node_type else worker_profile
        if profile and "IamInstanceProfile" not in node_config:
            node_config["IamInstanceProfile"] = profile_reference(profile)
        node_types[name] = dataclasses.replace(node_type, node_config=node_config)
    auth = dataclasses.replace(config.auth, ssh_private_key=private_key,
                               ssh_user=config.auth.ssh_user or DEFAULT_SSH_USER)
    config = config.replace(available_node_types=node_types, auth=auth)
    return fill_node_resources(config, clients)


def profile_reference(profile: str) -> dict:
    """RunInstances' IamInstanceProfile for a profile given by name or ARN."""
    return {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}


def _head_profile(clients, config, group_id: str, key_name: str) -> str:
    """The head's instance profile: the user's, or corral's least-privilege one."""
    head_config = config.available_node_types[config.head_node_type].node_config
    given = config.provider.get("iam_instance_profile")
    if given or "IamInstanceProfile" in head_config:
        return given
    worker_profiles = {config.provider.get("worker_iam_instance_profile")}
    for name, node_type in config.available_node_types.items():
        reference = node_type.node_config.get("IamInstanceProfile") or {}
        if name != config.head_node_type and reference:
            worker_profiles.add(reference.get("Arn") or reference.get("Name"))
    worker_role_arns = []
    for profile in sorted(filter(None, worker_profiles)):
        worker_role_arns.extend(aws_iam.profile_role_arns(clients.iam, profile))
    policy = aws_iam.head_policy(config.cluster_name, config.provider["region"],
                                 security_group_ids=[group_id], key_name=key_name,
                                 worker_role_arns=worker_role_arns)
    return aws_iam.ensure_head_profile(clients.iam, config.cluster_name,
                                       config.provider["region"], policy)


class _LazyImage:
    """Looks the default image up only if some node type needs it, and only once."""

    def __init__(self, clients, config):
        self.clients = clients
        self.config = config
        self.image_id = None

    def get(self) -> str:
        if self.image_id is None:
            self.image_id = default_image_id(self.clients, self.config)
        return self.image_id


def default_image_id(clients, config) -> str:
    parameter = config.provider.get("image_ssm_parameter") or DEFAULT_IMAGE_PARAMETER
    with aws_errors(f"read SSM parameter {parameter}"):
        try:
            return clients.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        except ClientError as error:
            if error_code(error) != "ParameterNotFound":
                raise
    raise ConfigError("provider.image_ssm_parameter", None,
                      f"the SSM parameter {parameter} does not exist in "
                      f"{config.provider['region']}; set ImageId in node_config or name "
                      "another parameter", source=config.source_path)


def instance_type_resources(ec2, names: list[str]) -> dict[str, dict]:
    """{instance type: resources} from EC2's catalogue; unknown names are left out."""
    described = {}
    for name in names:  # one call each: a single unknown name fails a whole batch
        with aws_errors(f"describe instance type {name}"):
            try:
                found = ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]
            except ClientError as error:
                if error_code(error) == "InvalidInstanceType":
                    continue
                raise
        for item in found:
            gpus = sum(gpu.get("Count", 0) for gpu in (item.get("GpuInfo") or {}).get("Gpus", []))
            described[item["InstanceType"]] = resources_from_shape(
                item["VCpuInfo"]["DefaultVCpus"], item["MemoryInfo"]["SizeInMiB"], gpus)
    return described


def fill_node_resources(config, clients: AWSClients | None = None):
    """Node types without `resources` get CPU, GPU and memory from their InstanceType."""
    clients = clients or AWSClients(config.provider["region"])
    return fill_resources(config, lambda node_config: node_config.get("InstanceType"),
                          lambda names: instance_type_resources(clients.ec2, names))
