"""AWSProvider: the nodes of one cluster as EC2 instances tagged with its name.

Every call is scoped by the `corral-cluster-name` tag; botocore exceptions are translated
to our errors (launcher.providers.aws.errors). Launches try the subnets of the node type
in order of zone preference and move on when a zone has no capacity.
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Mapping

from botocore.exceptions import ClientError

from launcher import tags as T
from launcher.errors import NodeNotFoundError, ProviderError
from launcher.config.frozen import thaw
from launcher.providers.aws import naming
from launcher.providers.aws.errors import aws_errors
from launcher.providers.aws.session import AWSClients
from launcher.providers.base import Capability, Node, NodeProvider, matches
from launcher.providers.cloud_common import launch_across_places, new_launch_token, notice

LIVE_STATES = ("pending", "running")
STOPPED_STATES = ("stopping", "stopped")
GONE_STATES = ("shutting-down", "terminated")
DEFAULT_TERMINATE_WAIT_S = 120.0
POLL_INTERVAL_S = 1.0
DEFAULT_SSH_USER = "ubuntu"  # the user of the default (Ubuntu) image


class AWSProvider(NodeProvider):
    capabilities = frozenset({Capability.PURGE})
    page_size = 500  # describe_instances results per page (tests make it small)
    # A new instance profile takes a few seconds to be usable by EC2 (IAM is eventually
    # consistent): RunInstances is retried meanwhile.
    ids_per_filter = 199  # EC2 takes at most 200 values per filter
    ids_per_call = 500  # instance ids per Terminate/StopInstances call
    iam_propagation_attempts = 8
    iam_propagation_delay_s = 2.5

    def __init__(self, config, clients: AWSClients | None = None):
        super().__init__(config)
        self.region = config.provider["region"]
        self.clients = clients or AWSClients(self.region)
        self.cache_stopped_nodes = bool(config.provider.get("cache_stopped_nodes", False))
        self.use_internal_ips = bool(config.provider.get("use_internal_ips", False))
        self.terminate_wait_s = float(config.provider.get("terminate_wait_s",
                                                          DEFAULT_TERMINATE_WAIT_S))
        self._lock = threading.Lock()
        self._own_ids: set[str] = set()
        self._subnet_zones: dict[str, str] = {}

    # -- cluster set-up --------------------------------------------------------------
    @staticmethod
    def bootstrap(config):
        from launcher.providers.aws.bootstrap import bootstrap_cluster
        return bootstrap_cluster(config)

    @staticmethod
    def fill_node_resources(config):
        from launcher.providers.aws.bootstrap import fill_node_resources
        return fill_node_resources(config)

    @staticmethod
    def purge(config) -> list[str]:
        """Remove everything corral made for the cluster (after terminating any node left,
        cached stopped ones included); returns a line per removed resource."""
        from launcher.providers.aws.purge import purge_cluster
        return purge_cluster(config)

    # -- listing ---------------------------------------------------------------------
    def instances_in_states(self, states, ids=None) -> list[dict]:
        """EC2's descriptions of the cluster's instances in `states` (None: any state),
        optionally only those among `ids`; all pages, ids asked for in chunks."""
        filters = [{"Name": f"tag:{T.TAG_CLUSTER_NAME}", "Values": [self.cluster_name]}]
        if states is not None:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        id_chunks = [None] if ids is None else _chunks(sorted(set(ids)), self.ids_per_filter)
        instances = []
        with aws_errors("describe instances"):
            paginator = self.clients.ec2.get_paginator("describe_instances")
            for chunk in id_chunks:
                chunk_filters = filters + ([{"Name": "instance-id", "Values": chunk}]
                                           if chunk is not None else [])
                for page in paginator.paginate(Filters=chunk_filters,
                                               PaginationConfig={"PageSize": self.page_size}):
                    for reservation in page["Reservations"]:
                        instances.extend(reservation["Instances"])
        with self._lock:
            self._own_ids.update(instance["InstanceId"] for instance in instances)
        return instances

    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        """Pending and running nodes of the cluster. Stopped (cached) nodes are not listed:
        they do no work and count toward no limit until create_nodes restarts them."""
        nodes = [self._node(instance) for instance in self.instances_in_states(LIVE_STATES)]
        return sorted((node for node in nodes if matches(node.tags, tag_filters)),
                      key=lambda node: node.id)

    def stopped_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        """Stopped or stopping nodes of the cluster (kept when cache_stopped_nodes)."""
        nodes = [self._node(instance) for instance in self.instances_in_states(STOPPED_STATES)]
        return [node for node in nodes if matches(node.tags, tag_filters)]

    def _node(self, instance: dict) -> Node:
        node_tags = {tag["Key"]: tag["Value"] for tag in instance.get("Tags") or []}
        return Node(id=instance["InstanceId"],
                    kind=node_tags.get(T.TAG_NODE_KIND, T.KIND_WORKER),
                    node_type=node_tags.get(T.TAG_NODE_TYPE, ""),
                    state=instance["State"]["Name"],
                    internal_ip=instance.get("PrivateIpAddress"),
                    external_ip=instance.get("PublicIpAddress"), tags=node_tags)

    # -- creating --------------------------------------------------------------------
    def create_nodes(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
                     count: int) -> list[str]:
        if count <= 0:
            return []
        node_tags = {**dict(tags), T.TAG_CLUSTER_NAME: self.cluster_name,
                     T.TAG_NODE_TYPE: tags.get(T.TAG_NODE_TYPE, node_type)}
        node_tags.setdefault(T.TAG_NODE_KIND, T.KIND_WORKER)
        reused = self._restart_stopped(node_tags, count) if self.cache_stopped_nodes else []
        if len(reused) >= count:
            return reused
        params = thaw(node_config)
        subnets = list(params.pop("SubnetIds", None) or [])
        if "SubnetId" in params:
            subnets = [params.pop("SubnetId")]
        params["TagSpecifications"] = merged_tag_specifications(
            params.get("TagSpecifications"), node_tags, self.cluster_name)

        def launch(subnet, n):
            return self._run_instances(params, subnet, n, node_type)
        try:
            created = launch_across_places(subnets, count - len(reused), launch,
                                           node_type=node_type, place_name=self._place_name)
        except ProviderError as error:
            raise error.add_created_ids(reused)
        return reused + created

    def _run_instances(self, params: dict, subnet: str | None, count: int,
                       node_type: str) -> list[str]:
        # All or nothing per zone (MinCount=MaxCount): a zone short of room for them all
        # answers InsufficientInstanceCapacity and the launch moves on to the next zone.
        # One ClientToken per request: botocore's own retries of it reuse the token, so a
        # request that timed out but succeeded is not launched twice.
        call = dict(params, MinCount=count, MaxCount=count)
        if subnet:
            call["SubnetId"] = subnet
        with aws_errors(f"launch {count} {node_type} node(s)", node_type=node_type,
                        zone=self._place_name(subnet) if subnet else None):
            for attempt in itertools.count(1):
                try:
                    instances = self.clients.ec2.run_instances(
                        **call, ClientToken=new_launch_token())["Instances"]
                    break
                except ClientError as error:
                    if not (_profile_not_visible_yet(error)
                            and attempt < self.iam_propagation_attempts):
                        raise
                    time.sleep(self.iam_propagation_delay_s)
        ids = [instance["InstanceId"] for instance in instances]
        with self._lock:
            self._own_ids.update(ids)
        return ids

    def _place_name(self, subnet: str) -> str:
        """'zone (subnet)' for messages and error data; zones looked up once per subnet."""
        if subnet not in self._subnet_zones:
            with aws_errors("describe subnets"):
                found = self.clients.ec2.describe_subnets(SubnetIds=[subnet])["Subnets"]
            self._subnet_zones[subnet] = found[0]["AvailabilityZone"] if found else "?"
        return f"{self._subnet_zones[subnet]} ({subnet})"

    def _restart_stopped(self, node_tags: dict, count: int) -> list[str]:
        """Restart up to `count` stopped nodes of the same type (and launch hash)."""
        wanted = {key: node_tags[key] for key in (T.TAG_NODE_TYPE, T.TAG_NODE_KIND,
                                                  T.TAG_LAUNCH_HASH) if key in node_tags}
        candidates = [instance for instance in self.instances_in_states(("stopped",))
                      if matches(self._node(instance).tags, wanted)]
        ids = sorted(instance["InstanceId"] for instance in candidates)[:count]
        if not ids:
            return []
        try:
            with aws_errors(f"restart {len(ids)} stopped node(s)"):
                self.clients.ec2.start_instances(InstanceIds=ids)
        except ProviderError as error:
            if not error.try_elsewhere:
                raise
            # their zone has no room now: launch new nodes (elsewhere) instead
            notice(f"could not restart stopped nodes {', '.join(ids)}: {error.cause}; "
                   "launching new ones")
            return []
        with aws_errors(f"tag {len(ids)} restarted node(s)"):
            self.clients.ec2.create_tags(Resources=ids, Tags=_tag_list(node_tags))
        return ids

    # -- tags ------------------------------------------------------------------------
    def set_node_tags(self, node_id: str, tags: Mapping[str, str]) -> None:
        self._check_own([node_id])
        updates = {key: value for key, value in tags.items() if key != T.TAG_CLUSTER_NAME}
        if updates:
            with aws_errors(f"tag node {node_id}"):
                self.clients.ec2.create_tags(Resources=[node_id], Tags=_tag_list(updates))

    def _check_own(self, ids: list[str]) -> None:
        with self._lock:
            unknown = [node_id for node_id in ids if node_id not in self._own_ids]
        if unknown:
            found = {instance["InstanceId"] for instance in self.instances_in_states(
                LIVE_STATES + STOPPED_STATES, ids=unknown)}
            missing = sorted(set(unknown) - found)
            if missing:
                raise NodeNotFoundError(f"no node {', '.join(missing)} in cluster "
                                        f"{self.cluster_name}", cause="NotInCluster")

    # -- terminating -----------------------------------------------------------------
    def terminate_nodes(self, ids: list[str]) -> None:
        """Terminate (or, with cache_stopped_nodes, stop) the cluster's nodes among `ids`;
        other ids are ignored. Waits up to terminate_wait_s for EC2 to confirm."""
        if not ids:
            return
        instances = self.instances_in_states(LIVE_STATES + STOPPED_STATES, ids=ids)
        if not instances:
            return
        stop, terminate = [], []
        for instance in instances:
            stoppable = (self.cache_stopped_nodes and instance.get("InstanceLifecycle") != "spot")
            if stoppable and instance["State"]["Name"] in LIVE_STATES:
                stop.append(instance["InstanceId"])
            elif not stoppable:
                terminate.append(instance["InstanceId"])
        ec2 = self.clients.ec2
        with aws_errors(f"terminate {len(terminate)} node(s)"):
            for chunk in _chunks(terminate, self.ids_per_call):
                ec2.terminate_instances(InstanceIds=chunk)
        with aws_errors(f"stop {len(stop)} node(s)"):
            for chunk in _chunks(stop, self.ids_per_call):
                ec2.stop_instances(InstanceIds=chunk)
            if stop:
                notice(f"stopped {len(stop)} node(s) of cluster {self.cluster_name} instead of "
                       "terminating them (cache_stopped_nodes); the next launch restarts "
                       "them, and `corral down --purge` removes them")
        self.wait_for_states(terminate, {"terminated"}, self.terminate_wait_s)
        self.wait_for_states(stop, {"stopped", "terminated"}, self.terminate_wait_s)

    def wait_for_states(self, ids: list[str], states: set[str], timeout_s: float) -> bool:
        """Poll until every instance is in one of `states`; False if time ran out."""
        if not ids:
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            pending = [instance["InstanceId"] for instance in
                       self.instances_in_states(None, ids=ids)
                       if instance["State"]["Name"] not in states]
            if not pending:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL_S)

    # -- commands --------------------------------------------------------------------
    def command_runner(self, node: Node):
        from launcher.ssh.runner import SSHRunner
        host = node.internal_ip if self.use_internal_ips else (node.external_ip
                                                               or node.internal_ip)
        auth = self.config.auth
        if not host:
            kind = "internal IP" if self.use_internal_ips else "IP address"
            raise ProviderError(f"node {node.id} has no {kind} yet", cause="NoAddress")
        return SSHRunner(host, user=auth.ssh_user or DEFAULT_SSH_USER,
                         private_key_path=self._private_key_path(),
                         cluster_name=self.cluster_name, proxy_command=auth.ssh_proxy_command,
                         timeout_s=auth.ssh_timeout_s,
                         host_key_alias=node.id)  # clouds reuse IPs: pin by instance

    def _private_key_path(self) -> str:
        """auth.ssh_private_key, or (for a config that was not bootstrapped in this
        process, as `corral down`/`exec` load it) the key pair corral made for the cluster."""
        if self.config.auth.ssh_private_key:
            return self.config.auth.ssh_private_key
        managed = naming.private_key_path(self.cluster_name)
        if not self.config.provider.get("key_name") and managed.exists():
            return str(managed)
        raise ProviderError(f"no SSH private key for cluster {self.cluster_name}: set "
                            "auth.ssh_private_key, or run `corral up` to create the "
                            "cluster's key pair", cause="NoPrivateKey")


def _chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def _profile_not_visible_yet(error: ClientError) -> bool:
    details = error.response.get("Error", {})
    return (details.get("Code") == "InvalidParameterValue"
            and "iaminstanceprofile" in (details.get("Message") or "").lower())


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": str(value)} for key, value in tags.items()]


def merged_tag_specifications(user_specs, node_tags: Mapping[str, str],
                              cluster_name: str) -> list[dict]:
    """The user's TagSpecifications with ours merged in (ours win on the same key): the
    instance gets every node tag, its volumes the cluster tag, and both a Name."""
    by_type: dict[str, dict[str, str]] = {}
    for spec in user_specs or []:
        bucket = by_type.setdefault(spec["ResourceType"], {})
        bucket.update({tag["Key"]: tag["Value"] for tag in spec.get("Tags", [])})
    name = f"corral-{cluster_name}-{node_tags.get(T.TAG_NODE_KIND, T.KIND_WORKER)}"
    instance = by_type.setdefault("instance", {})
    instance.setdefault("Name", name)
    instance.update(node_tags)
    volume = by_type.setdefault("volume", {})
    volume.setdefault("Name", name)
    volume[T.TAG_CLUSTER_NAME] = cluster_name
    return [{"ResourceType": resource_type, "Tags": _tag_list(bucket)}
            for resource_type, bucket in by_type.items()]
