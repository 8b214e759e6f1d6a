"""The head node's IAM instance profile: a role whose only permissions are those the
autoscaler on the head needs for this cluster's instances.

Not EC2 or S3 full access: launching requires the new instance and its volumes to carry
this cluster's tag, and stop/start/terminate/re-tag only work on instances that already
carry it. Describe calls cannot be scoped by AWS, so they are listed one by one.
"""
from __future__ import annotations

import json
import time

from launcher.providers.aws import naming
from launcher.providers.aws.errors import aws_errors, error_code
from launcher.tags import TAG_CLUSTER_NAME

from botocore.exceptions import ClientError

DESCRIBE_ACTIONS = (
    "ec2:DescribeInstances", "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypes",
    "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
    "ec2:DescribeKeyPairs", "ec2:DescribeAvailabilityZones", "ec2:DescribeVpcs",
)
LIFECYCLE_ACTIONS = ("ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances")
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                   "Action": "sts:AssumeRole"}],
}


def head_policy(cluster_name: str, region: str, *, security_group_ids=(), key_name=None,
                worker_role_arns=()) -> dict:
    """The least-privilege policy document of the head's role (plain data)."""
    arn = f"arn:{naming.partition(region)}:ec2:{region}"
    tagged = {TAG_CLUSTER_NAME: cluster_name}
    launch_support = [f"{arn}::image/*", f"{arn}:*:subnet/*", f"{arn}:*:network-interface/*",
                      f"{arn}:*:spot-instances-request/*"]
    launch_support += [f"{arn}:*:security-group/{group}" for group in security_group_ids]
    if key_name:
        launch_support.append(f"{arn}:*:key-pair/{key_name}")
    statements = [
        {"Sid": "ReadOnlyDescribe", "Effect": "Allow", "Action": list(DESCRIBE_ACTIONS),
         "Resource": "*"},
        {"Sid": "LaunchOnlyTaggedForThisCluster", "Effect": "Allow",
         "Action": ["ec2:RunInstances"],
         "Resource": [f"{arn}:*:instance/*", f"{arn}:*:volume/*"],
         "Condition": {"StringEquals": {f"aws:RequestTag/{k}": v for k, v in tagged.items()}}},
        {"Sid": "LaunchUsingTheseResources", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": launch_support},
        {"Sid": "TagOnLaunch", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": [f"{arn}:*:instance/*", f"{arn}:*:volume/*"],
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
        {"Sid": "ManageOnlyThisClustersInstances", "Effect": "Allow",
         "Action": list(LIFECYCLE_ACTIONS), "Resource": [f"{arn}:*:instance/*"],
         "Condition": {"StringEquals": {f"aws:ResourceTag/{k}": v for k, v in tagged.items()}}},
        {"Sid": "RetagOnlyThisClustersInstances", "Effect": "Allow",
         "Action": ["ec2:CreateTags"], "Resource": [f"{arn}:*:instance/*"],
         "Condition": {
             "StringEquals": {f"aws:ResourceTag/{k}": v for k, v in tagged.items()},
             # the head may change a node's status tags, never move it to another cluster
             "ForAllValues:StringNotEquals": {"aws:TagKeys": [TAG_CLUSTER_NAME]}}},
    ]
    if worker_role_arns:
        statements.append(
            {"Sid": "PassOnlyTheWorkerRole", "Effect": "Allow", "Action": ["iam:PassRole"],
             "Resource": sorted(worker_role_arns),
             "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}})
    return {"Version": "2012-10-17", "Statement": statements}


def profile_role_arns(iam, profile: str) -> list[str]:
    """The role ARNs of an instance profile given by name or ARN."""
    name = profile.rsplit("/", 1)[-1] if profile.startswith("arn:") else profile
    with aws_errors(f"get instance profile {name}"):
        found = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    return [role["Arn"] for role in found.get("Roles", [])]


def ensure_head_profile(iam, cluster_name: str, region: str, policy: dict) -> str:
    """Create (or bring up to date) the head's role and instance profile; returns its ARN."""
    name = naming.head_profile_name(cluster_name, region)
    tags = naming.cluster_tags(cluster_name)
    with aws_errors(f"create IAM role {name}"):
        if _get(lambda: iam.get_role(RoleName=name)) is None:
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                            Description=f"corral head of cluster {cluster_name} ({region})",
                            Tags=tags)
        iam.put_role_policy(RoleName=name, PolicyName=naming.ROLE_POLICY_NAME,
                            PolicyDocument=json.dumps(policy))
    with aws_errors(f"create IAM instance profile {name}"):
        profile = _get(lambda: iam.get_instance_profile(InstanceProfileName=name))
        if profile is None:
            profile = iam.create_instance_profile(InstanceProfileName=name, Tags=tags)
        profile = profile["InstanceProfile"]
        if not any(role["RoleName"] == name for role in profile.get("Roles", [])):
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return profile["Arn"]


def delete_head_profile(iam, cluster_name: str, region: str) -> list[str]:
    """Remove the head's instance profile and role (only if corral made them)."""
    name = naming.head_profile_name(cluster_name, region)
    removed = []
    with aws_errors(f"delete IAM instance profile {name}"):
        profile = _get(lambda: iam.get_instance_profile(InstanceProfileName=name))
        if profile is not None and naming.has_cluster_tag(profile["InstanceProfile"],
                                                          cluster_name):
            for role in profile["InstanceProfile"].get("Roles", []):
                iam.remove_role_from_instance_profile(InstanceProfileName=name,
                                                      RoleName=role["RoleName"])
            _retry_while_in_use(lambda: iam.delete_instance_profile(InstanceProfileName=name))
            removed.append(f"instance profile {name}")
    with aws_errors(f"delete IAM role {name}"):
        role = _get(lambda: iam.get_role(RoleName=name))
        if role is not None and naming.has_cluster_tag(role["Role"], cluster_name):
            for policy_name in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy_name)
            iam.delete_role(RoleName=name)
            removed.append(f"IAM role {name}")
    return removed


def _get(call):
    try:
        return call()
    except ClientError as error:
        if error_code(error) == "NoSuchEntity":
            return None
        raise


def _retry_while_in_use(call, attempts: int = 10, delay_s: float = 3.0):
    """IAM refuses to delete a profile still attached to an instance that is shutting down."""
    for attempt in range(attempts):
        try:
            return call()
        except ClientError as error:
            if error_code(error) != "DeleteConflict" or attempt == attempts - 1:
                raise
            time.sleep(delay_s)
