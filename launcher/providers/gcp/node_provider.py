"""GCPProvider: the cluster's nodes are Compute Engine instances in the provider's zones.

A node id is the instance name (unique per project in practice: it ends in random hex);
the provider remembers the zone of every instance it listed or created. Our tags live in
the instance labels through launcher.providers.gcp.labels (lossless encoding); what does
not fit in 64 labels lives in the instance metadata item `corral-tags`.
"""
from __future__ import annotations

import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from launcher import tags as T
from launcher.errors import NodeNotFoundError, ProviderError
from launcher.providers import cloud_common
from launcher.providers.base import (STATE_PENDING, STATE_RUNNING, STATE_STOPPED,
                                     STATE_STOPPING, Capability, Node, NodeId, NodeProvider,
                                     matches)
from launcher.providers.gcp import labels as label_codec
from launcher.providers.gcp import naming
from launcher.providers.gcp.client import GCEClient
from launcher.providers.gcp.instance_body import instance_body


STATES = {"PROVISIONING": STATE_PENDING, "STAGING": STATE_PENDING, "RUNNING": STATE_RUNNING,
          "STOPPING": STATE_STOPPING, "SUSPENDING": STATE_STOPPING, "REPAIRING": STATE_PENDING,
          "SUSPENDED": STATE_STOPPED, "STOPPED": STATE_STOPPED, "TERMINATED": STATE_STOPPED}
MAX_PARALLEL_CALLS = 16
PAGE_SIZE = 500
FINGERPRINT_ATTEMPTS = 6
DEFAULT_SSH_USER = "ubuntu"


class GCPProvider(NodeProvider):
    capabilities = frozenset({Capability.PURGE})

    def __init__(self, config, client: GCEClient | None = None):
        super().__init__(config)
        self.provider_config = config.provider
        self.project = config.provider["project_id"]
        self.zones = naming.zones(config.provider)
        self.operation_timeout_s = float(config.provider.get("operation_timeout_s", 300))
        self._client = client
        self._zone_of: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def client(self) -> GCEClient:
        with self._lock:
            if self._client is None:
                self._client = GCEClient(self.provider_config)
            return self._client

    @staticmethod
    def bootstrap(config):
        from launcher.providers.gcp.setup import bootstrap_gcp
        return bootstrap_gcp(config)

    @staticmethod
    def purge(config) -> list[str]:
        """Remove what bootstrap made for this cluster (its firewall rules); returns what
        was removed. The project-wide role and head service account stay (shared)."""
        from launcher.providers.gcp.setup import purge_gcp
        return purge_gcp(config)

    # -- listing ------------------------------------------------------------------------
    def _filter(self, tag_filters: Mapping[str, str]) -> str:
        """Server-side filter on the tags that always live in labels (the priority ones)
        with one-piece values; everything else is matched after decoding."""
        terms = []
        for key, value in {**tag_filters, T.TAG_CLUSTER_NAME: self.cluster_name}.items():
            encoded = label_codec.encode_text(str(value))
            if key in label_codec.PRIORITY_KEYS and len(encoded) <= label_codec.MAX_LABEL_CHARS:
                terms.append(f'(labels.{label_codec.encode_key(str(key))} = "{encoded}")')
        return " AND ".join(terms)

    def _list_all_zones(self, filter_text: str) -> list[tuple[str, dict[str, Any]]]:
        """(zone, instance) of every matching instance of the project, in any zone (one
        paginated aggregatedList), so nodes left in a zone no longer configured are still
        found and `down` removes them."""
        found: list[tuple[str, dict[str, Any]]] = []
        page_token = None
        while True:
            page = self.client.execute(
                lambda: self.client.compute.instances().aggregatedList(
                    project=self.project, filter=filter_text, maxResults=PAGE_SIZE,
                    pageToken=page_token),
                what="listing the cluster's instances")
            for scope, scoped in (page.get("items") or {}).items():
                zone = scope.rsplit("/", 1)[-1]
                found.extend((zone, instance) for instance in scoped.get("instances") or [])
            page_token = page.get("nextPageToken")
            if not page_token:
                return found

    def non_terminated_nodes(self, tag_filters: Mapping[str, str] | None = None) -> list[Node]:
        nodes = []
        for zone, instance in self._list_all_zones(self._filter(dict(tag_filters or {}))):
            node = self._to_node(instance, zone)
            if node.tags.get(T.TAG_CLUSTER_NAME) == self.cluster_name and matches(
                    node.tags, tag_filters):
                nodes.append(node)
        return nodes

    def _to_node(self, instance: Mapping[str, Any], zone: str) -> Node:
        tags = label_codec.instance_tags(instance)
        interfaces = instance.get("networkInterfaces") or [{}]
        internal_ip = interfaces[0].get("networkIP")
        external_ip = next((access.get("natIP") for access in interfaces[0].get("accessConfigs") or []
                            if access.get("natIP")), None)
        with self._lock:
            self._zone_of[instance["name"]] = zone
        return Node(id=instance["name"], kind=tags.get(T.TAG_NODE_KIND, T.KIND_WORKER),
                    node_type=tags.get(T.TAG_NODE_TYPE, ""),
                    state=STATES.get(instance.get("status", ""), STATE_PENDING),
                    internal_ip=internal_ip, external_ip=external_ip, tags=tags)

    def node(self, node_id: NodeId) -> Node | None:
        """One GET (in the zone it was seen in) instead of listing every zone."""
        try:
            zone, instance = self._get_own(node_id)
        except NodeNotFoundError:
            return None
        return self._to_node(instance, zone)

    def _get_own(self, node_id: NodeId) -> tuple[str, dict[str, Any]]:
        """(zone, instance) of one of our instances; NodeNotFoundError otherwise."""
        zone = self._zone_of.get(node_id)
        if zone:
            instance = self.client.execute(
                lambda: self.client.compute.instances().get(
                    project=self.project, zone=zone, instance=node_id),
                what=f"reading instance {node_id}", zone=zone, not_found_ok=True)
        else:  # never seen: find its zone (names are [a-z0-9-], safe to quote)
            found = self._list_all_zones(f'(name = "{node_id}")') if re.fullmatch(
                r"[a-z0-9-]+", node_id) else []
            zone, instance = found[0] if found else (None, None)
        if instance is None or label_codec.instance_tags(instance).get(
                T.TAG_CLUSTER_NAME) != self.cluster_name:
            raise NodeNotFoundError(f"no node {node_id} in cluster {self.cluster_name}")
        with self._lock:
            self._zone_of[node_id] = zone
        return zone, instance

    # -- creating -----------------------------------------------------------------------
    def create_nodes(self, node_type: str, node_config: Mapping, tags: Mapping[str, str],
                     count: int) -> list[NodeId]:
        if count <= 0:
            return []
        all_tags = {**dict(node_config.get("labels") or {}), **dict(tags),
                    T.TAG_CLUSTER_NAME: self.cluster_name}
        all_tags.setdefault(T.TAG_NODE_TYPE, node_type)
        labels, overflow = label_codec.split_tags(all_tags)
        overflow_json = label_codec.overflow_json(overflow) if overflow else None
        kind = all_tags.get(T.TAG_NODE_KIND, T.KIND_WORKER)

        def launch(zone: str, how_many: int) -> list[str]:
            return self._launch_in_zone(zone, how_many, node_type, node_config, labels,
                                        overflow_json, kind)
        return cloud_common.launch_across_places(self.zones, count, launch, node_type=node_type)

    def _launch_in_zone(self, zone, count, node_type, node_config, labels, overflow_json,
                        kind) -> list[str]:
        def one(_index: int) -> str | ProviderError:
            name = naming.instance_name(self.cluster_name, kind)
            try:
                body = instance_body(node_config, name=name, zone=zone,
                                     provider=self.provider_config,
                                     cluster_name=self.cluster_name, labels=labels,
                                     overflow_json=overflow_json)
            except ValueError as error:
                return ProviderError(str(error), node_type=node_type, zone=zone)
            # GCE wants a UUID in canonical form; retries of this insert reuse it, so a
            # request that reached GCE but whose answer was lost creates no second node.
            request_id = str(uuid.uuid4())
            what = f"creating {node_type} node {name} in {zone}"
            try:
                operation = self.client.execute(
                    lambda: self.client.compute.instances().insert(
                        project=self.project, zone=zone, body=body, requestId=request_id),
                    what=what, node_type=node_type, zone=zone)
                with self._lock:
                    self._zone_of[name] = zone
                self.client.wait_operation(operation, timeout_s=self.operation_timeout_s,
                                           what=what, node_type=node_type)
            except ProviderError as error:
                return error
            return name

        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CALLS, count)) as pool:
            outcomes = list(pool.map(one, range(count)))
        created = [outcome for outcome in outcomes if isinstance(outcome, str)]
        errors = [outcome for outcome in outcomes if isinstance(outcome, ProviderError)]
        if errors and not created:
            hard = [error for error in errors if not error.try_elsewhere]
            raise (hard or errors)[0]
        for error in errors:
            if not error.try_elsewhere:
                raise error.add_created_ids(created)
        return created

    # -- terminating --------------------------------------------------------------------
    def terminate_nodes(self, ids: list[NodeId]) -> None:
        wanted = set(ids)
        if not wanted:
            return
        # Only nodes of this cluster: an id of another cluster's node is left alone.
        ours = {node.id: self._zone_of[node.id] for node in self.non_terminated_nodes()
                if node.id in wanted}

        def one(item) -> ProviderError | None:
            name, zone = item
            what = f"deleting node {name} in {zone}"
            try:
                operation = self.client.execute(
                    lambda: self.client.compute.instances().delete(
                        project=self.project, zone=zone, instance=name),
                    what=what, zone=zone, not_found_ok=True)
                if operation is not None:
                    self.client.wait_operation(operation, timeout_s=self.operation_timeout_s,
                                               what=what)
            except ProviderError as error:
                return error
            return None

        if not ours:
            return
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_CALLS, len(ours))) as pool:
            errors = [error for error in pool.map(one, ours.items()) if error is not None]
        if errors:
            raise errors[0]

    # -- tags ---------------------------------------------------------------------------
    def set_node_tags(self, node_id: NodeId, tags: Mapping[str, str]) -> None:
        """Merge tags into the node's; on a stale fingerprint (HTTP 412: someone else
        changed the labels or metadata meanwhile) read again and retry."""
        for attempt in range(1, FINGERPRINT_ATTEMPTS + 1):
            try:
                self._apply_tags(node_id, tags)
                return
            except ProviderError as error:
                if "conditionNotMet" not in (error.cause or ""):
                    raise
                if attempt == FINGERPRINT_ATTEMPTS:
                    raise ProviderError(
                        f"setting tags of node {node_id}: its labels kept changing under us "
                        f"(stale labelFingerprint {FINGERPRINT_ATTEMPTS} times in a row)",
                        cause=error.cause) from None

    def _apply_tags(self, node_id: NodeId, tags: Mapping[str, str]) -> None:
        zone, instance = self._get_own(node_id)
        merged = {**label_codec.instance_tags(instance), **dict(tags)}
        labels, overflow = label_codec.split_tags(merged)
        old_overflow = label_codec.join_tags({}, label_codec.metadata_overflow(instance))
        # Keys leaving the overflow for labels keep their new value in the overflow until
        # the labels are written, so a reader in between never sees them vanish.
        staged = {**overflow, **{key: merged[key] for key in old_overflow if key not in overflow}}
        if staged != old_overflow:
            self._set_overflow(zone, instance, staged)
        if labels != (instance.get("labels") or {}):
            body = {"labels": labels, "labelFingerprint": instance.get("labelFingerprint")}
            self._instance_call(zone, node_id, "setLabels", body)
        if staged != overflow:
            _zone, instance = self._get_own(node_id)
            self._set_overflow(zone, instance, overflow)

    def _set_overflow(self, zone: str, instance: Mapping[str, Any],
                      overflow: Mapping[str, str]) -> None:
        metadata = instance.get("metadata") or {}
        items = [item for item in metadata.get("items") or []
                 if item.get("key") != label_codec.OVERFLOW_METADATA_KEY]
        if overflow:
            items.append({"key": label_codec.OVERFLOW_METADATA_KEY,
                          "value": label_codec.overflow_json(overflow)})
        self._instance_call(zone, instance["name"], "setMetadata",
                            {"fingerprint": metadata.get("fingerprint"), "items": items})

    def _instance_call(self, zone: str, node_id: NodeId, method: str, body: dict) -> None:
        what = f"setting tags of node {node_id} ({method})"
        operation = self.client.execute(
            lambda: getattr(self.client.compute.instances(), method)(
                project=self.project, zone=zone, instance=node_id, body=body),
            what=what, zone=zone)
        self.client.wait_operation(operation, timeout_s=self.operation_timeout_s, what=what)

    # -- commands -----------------------------------------------------------------------
    def command_runner(self, node: Node):
        from launcher.ssh.runner import SSHRunner
        auth = self.config.auth
        use_internal = bool(self.provider_config.get("use_internal_ips"))
        host = node.internal_ip if use_internal else (node.external_ip or node.internal_ip)
        if not host:
            raise ProviderError(f"node {node.id} has no IP address yet")
        # A config that was not bootstrapped in this process (down, exec) still finds the
        # cluster's own key.
        key_path = auth.ssh_private_key or str(naming.private_key_path(self.cluster_name))
        return SSHRunner(host, user=auth.ssh_user or DEFAULT_SSH_USER, private_key_path=key_path,
                         cluster_name=self.cluster_name, proxy_command=auth.ssh_proxy_command,
                         timeout_s=auth.ssh_timeout_s,
                         host_key_alias=node.id)  # clouds reuse IPs: pin by instance
