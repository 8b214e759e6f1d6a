"""The head's IAM policy is least privilege (pure: no cloud needed)."""
from __future__ import annotations

from launcher.providers.aws.iam import head_policy
from launcher.tags import TAG_CLUSTER_NAME


def actions(statement):
    value = statement["Action"]
    return [value] if isinstance(value, str) else value


def test_no_wildcard_actions_and_mutations_are_scoped_by_the_cluster_tag():
    policy = head_policy("blue", "us-west-2", security_group_ids=["sg-1"], key_name="corral-blue")
    all_actions = [action for statement in policy["Statement"] for action in actions(statement)]
    assert "*" not in all_actions and "ec2:*" not in all_actions
    assert not [action for action in all_actions if action.endswith("*")]
    assert not [action for action in all_actions if action.startswith("s3:")]
    for statement in policy["Statement"]:
        mutating = [a for a in actions(statement) if not a.startswith("ec2:Describe")]
        if statement["Resource"] == "*":
            assert not mutating, statement  # only Describe* may be unscoped
    lifecycle = [s for s in policy["Statement"] if "ec2:TerminateInstances" in actions(s)]
    assert lifecycle and all(
        s["Condition"]["StringEquals"][f"aws:ResourceTag/{TAG_CLUSTER_NAME}"] == "blue"
        for s in lifecycle)
    launches = [s for s in policy["Statement"] if "ec2:RunInstances" in actions(s)
                and any(":instance/" in r for r in s["Resource"])]
    assert launches and all(
        s["Condition"]["StringEquals"][f"aws:RequestTag/{TAG_CLUSTER_NAME}"] == "blue"
        for s in launches)
    assert not [s for s in policy["Statement"] if "iam:PassRole" in actions(s)]


def test_pass_role_only_for_the_worker_role():
    role = "arn:aws:iam::123456789012:role/workers"
    policy = head_policy("blue", "us-west-2", worker_role_arns=[role])
    [passing] = [s for s in policy["Statement"] if "iam:PassRole" in actions(s)]
    assert passing["Resource"] == [role]
    assert passing["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"


def test_arns_follow_the_partition_of_the_region():
    policy = head_policy("blue", "cn-north-1")
    resources = [r for s in policy["Statement"] if s["Resource"] != "*" for r in s["Resource"]]
    assert all(r.startswith("arn:aws-cn:ec2:cn-north-1:") for r in resources)
