"""The cluster's place in the network: the VPC, subnets in the preferred zones (in order),
and the per-cluster security group (all traffic inside the group, SSH only from
ssh_ingress_cidrs)."""
from __future__ import annotations

import ipaddress
import time

from botocore.exceptions import ClientError

from launcher.errors import ConfigError
from launcher.providers.aws import naming
from launcher.providers.aws.errors import aws_errors, error_code
from launcher.providers.cloud_common import notice, ssh_open_notice, zone_list

SSH_PORT = 22


def find_vpc(ec2, config) -> dict:
    """provider.vpc_id, or the account's default VPC in the region."""
    vpc_id = config.provider.get("vpc_id")
    filters = ([{"Name": "vpc-id", "Values": [vpc_id]}] if vpc_id
               else [{"Name": "isDefault", "Values": ["true"]}])
    with aws_errors("describe VPCs"):
        vpcs = ec2.describe_vpcs(Filters=filters)["Vpcs"]
    if not vpcs:
        raise ConfigError("provider.vpc_id", None,
                          f"VPC {vpc_id} not found" if vpc_id else
                          f"the region {config.provider['region']} has no default VPC; "
                          "set provider.vpc_id", source=config.source_path)
    return vpcs[0]


def choose_subnets(ec2, config, vpc: dict) -> list[tuple[str, str]]:
    """[(subnet id, zone)] of the VPC in the preferred zones, in order of preference
    (every zone, by name, when availability_zone is not set)."""
    zones = zone_list(config.provider.get("availability_zone"))
    filters = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    if zones:
        filters.append({"Name": "availability-zone", "Values": zones})
    subnets = []
    with aws_errors("describe subnets"):
        for page in ec2.get_paginator("describe_subnets").paginate(Filters=filters):
            subnets.extend(page["Subnets"])
    if vpc.get("IsDefault") and any(subnet.get("DefaultForAz") for subnet in subnets):
        subnets = [subnet for subnet in subnets if subnet.get("DefaultForAz")]
    if not subnets:
        raise ConfigError("provider.availability_zone", None,
                          f"no subnet of {vpc['VpcId']} in "
                          f"{', '.join(zones) if zones else 'any zone'}",
                          source=config.source_path)
    found_zones = {subnet["AvailabilityZone"] for subnet in subnets}
    missing = [zone for zone in zones if zone not in found_zones]
    if missing:
        notice(f"no subnet of {vpc['VpcId']} in {', '.join(missing)}; those zones are skipped")

    def preference(subnet):
        zone = subnet["AvailabilityZone"]
        return (zones.index(zone) if zone in zones else 0, zone, subnet["SubnetId"])
    return [(subnet["SubnetId"], subnet["AvailabilityZone"])
            for subnet in sorted(subnets, key=preference)]


def ssh_ingress_cidrs(config, vpc: dict) -> list[str]:
    """Who may reach port 22: provider.ssh_ingress_cidrs, or the VPC's own range when the
    launcher reaches nodes by internal IPs. Never the internet unless written."""
    cidrs = list(config.provider.get("ssh_ingress_cidrs") or [])
    if not cidrs and config.provider.get("use_internal_ips"):
        cidrs = [vpc["CidrBlock"]]
    if not cidrs:
        raise ConfigError(
            "provider.ssh_ingress_cidrs", None,
            "say which networks may SSH to the nodes, e.g. [203.0.113.7/32] for your own "
            "address (corral never opens SSH to the internet by itself; 0.0.0.0/0 does, "
            "if you really want that), or set use_internal_ips: true inside the VPC",
            source=config.source_path)
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError("provider.ssh_ingress_cidrs", None,
                              f"{cidr!r} is not a network in CIDR notation",
                              source=config.source_path) from None
    return cidrs


def ensure_security_group(ec2, config, vpc: dict) -> str:
    """The cluster's security group id, created or brought up to date."""
    override = config.provider.get("security_group")
    if override and override.startswith("sg-"):
        with aws_errors(f"describe security group {override}"):
            try:
                ec2.describe_security_groups(GroupIds=[override])
            except ClientError as error:
                if error_code(error).startswith("InvalidGroup"):
                    raise ConfigError("provider.security_group", None,
                                      f"security group {override} not found",
                                      source=config.source_path) from None
                raise
        return override
    cidrs = ssh_ingress_cidrs(config, vpc)
    name = naming.security_group_name(config)
    group = find_security_group(ec2, name, vpc["VpcId"])
    if group is None:
        with aws_errors(f"create security group {name}"):
            created = ec2.create_security_group(
                GroupName=name, VpcId=vpc["VpcId"],
                Description=f"corral cluster {config.cluster_name}: all traffic inside "
                            "the group, SSH only from ssh_ingress_cidrs",
                TagSpecifications=[naming.tag_specification("security-group",
                                                            config.cluster_name)])
        group = {"GroupId": created["GroupId"], "IpPermissions": [],
                 "Tags": naming.cluster_tags(config.cluster_name)}
    elif not naming.has_cluster_tag(group, config.cluster_name):
        notice(f"security group {name} ({group['GroupId']}) was not made by corral for this "
               "cluster; using it without changing its rules")
        return group["GroupId"]
    sync_ingress(ec2, group, cidrs)
    ssh_open_notice(cidrs, f"security group {name}")
    return group["GroupId"]


def find_security_group(ec2, name: str, vpc_id: str) -> dict | None:
    with aws_errors(f"describe security group {name}"):
        groups = ec2.describe_security_groups(Filters=[
            {"Name": "group-name", "Values": [name]},
            {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
    return groups[0] if groups else None


def _is_ssh_rule(permission: dict) -> bool:
    return (permission.get("IpProtocol") == "tcp" and permission.get("FromPort") == SSH_PORT
            and permission.get("ToPort") == SSH_PORT)


def sync_ingress(ec2, group: dict, cidrs: list[str]) -> None:
    """Make the group's rules: all traffic from members of the group, SSH from `cidrs` only
    (SSH rules for other networks are revoked; unrelated rules are left alone)."""
    group_id = group["GroupId"]
    permissions = group.get("IpPermissions") or []
    has_self_rule = any(
        permission.get("IpProtocol") == "-1" and any(
            pair.get("GroupId") == group_id for pair in permission.get("UserIdGroupPairs", []))
        for permission in permissions)
    current_v4 = {r["CidrIp"] for p in permissions if _is_ssh_rule(p)
                  for r in p.get("IpRanges", [])}
    current_v6 = {r["CidrIpv6"] for p in permissions if _is_ssh_rule(p)
                  for r in p.get("Ipv6Ranges", [])}
    wanted_v4 = {cidr for cidr in cidrs if ipaddress.ip_network(cidr, strict=False).version == 4}
    wanted_v6 = set(cidrs) - wanted_v4
    add, remove = [], []
    if not has_self_rule:
        add.append({"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id}]})
    if wanted_v4 - current_v4 or wanted_v6 - current_v6:
        add.append(_ssh_permission(wanted_v4 - current_v4, wanted_v6 - current_v6))
    if current_v4 - wanted_v4 or current_v6 - wanted_v6:
        remove.append(_ssh_permission(current_v4 - wanted_v4, current_v6 - wanted_v6))
    with aws_errors(f"update rules of security group {group_id}"):
        if add:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=add)
        if remove:
            ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=remove)


def _ssh_permission(v4: set[str], v6: set[str]) -> dict:
    permission = {"IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT}
    if v4:
        permission["IpRanges"] = [{"CidrIp": cidr, "Description": "corral ssh_ingress_cidrs"}
                                  for cidr in sorted(v4)]
    if v6:
        permission["Ipv6Ranges"] = [{"CidrIpv6": cidr,
                                     "Description": "corral ssh_ingress_cidrs"}
                                    for cidr in sorted(v6)]
    return permission


def delete_security_group(ec2, config, attempts: int = 20, delay_s: float = 3.0) -> list[str]:
    """Remove the cluster's security group (only one corral made for this cluster).
    Retries while EC2 still counts terminated instances' interfaces as users."""
    override = config.provider.get("security_group")
    if override and override.startswith("sg-"):
        return []
    name = naming.security_group_name(config)
    with aws_errors("describe VPCs"):
        vpcs = [vpc["VpcId"] for vpc in ec2.describe_vpcs()["Vpcs"]]
    removed = []
    for vpc_id in vpcs:
        group = find_security_group(ec2, name, vpc_id)
        if group is None or not naming.has_cluster_tag(group, config.cluster_name):
            continue
        with aws_errors(f"delete security group {name}"):
            for attempt in range(attempts):
                try:
                    ec2.delete_security_group(GroupId=group["GroupId"])
                    break
                except ClientError as error:
                    if error_code(error) != "DependencyViolation" or attempt == attempts - 1:
                        raise
                    time.sleep(delay_s)
        removed.append(f"security group {name} ({group['GroupId']})")
    return removed
