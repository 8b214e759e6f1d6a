"""The state behind the fake GCE API (tests/gcp/fake_gce.py): instances, operations that
finish after a short delay, firewalls, machine types, image families, IAM roles, service
accounts and the project IAM policy, plus injected failures. All methods hold one lock.

Errors are raised as FakeHTTPError(status, reason, message) and rendered by the server in
the Google JSON error shape.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import threading
import time
from typing import Any

from launcher.providers.gcp.labels import is_valid_label

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
MACHINE_TYPES = {
    "e2-small": {"guestCpus": 2, "memoryMb": 2048},
    "n2-standard-4": {"guestCpus": 4, "memoryMb": 16384},
    "n2-standard-8": {"guestCpus": 8, "memoryMb": 32768},
    "n1-standard-8": {"guestCpus": 8, "memoryMb": 30720},
    "a2-highgpu-1g": {"guestCpus": 12, "memoryMb": 87040,
                      "accelerators": [{"guestAcceleratorType": "nvidia-tesla-a100",
                                        "guestAcceleratorCount": 1}]},
}
IMAGE_FAMILIES = {("ubuntu-os-cloud", "ubuntu-2404-lts-amd64"): "ubuntu-2404-noble-amd64-v20261101"}


class FakeHTTPError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclasses.dataclass
class Injection:
    """Make the next `times` calls of `method` (in `zone`, if given) fail: either the HTTP
    call itself (`status` set) or the operation it starts (`operation_code`)."""
    method: str
    zone: str | None = None
    times: int = 1
    status: int | None = None
    reason: str = ""
    operation_code: str | None = None
    message: str = "injected failure"


def fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class FakeGCEState:
    def __init__(self, base_url: str = "", operation_delay_s: float = 0.05):
        self.base_url = base_url
        self.operation_delay_s = operation_delay_s
        self.max_page_size = 500
        self.lock = threading.RLock()
        self.instances: dict[tuple[str, str, str], dict] = {}
        self.operations: dict[str, dict] = {}
        self.firewalls: dict[tuple[str, str], dict] = {}
        self.roles: dict[str, dict] = {}
        self.service_accounts: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self.injections: list[Injection] = []
        # (internal IP, external IP) pairs handed to new instances when set (end-to-end
        # tests point them at sshd test hosts); an exhausted pool is a capacity error.
        self.ip_pool: list[tuple[str, str]] = []
        self.image_families = dict(IMAGE_FAMILIES)
        self.calls: list[tuple[str, str | None]] = []  # (method, zone)
        self._ids = itertools.count(1000)
        self._ips = itertools.count(2)

    # -- helpers ------------------------------------------------------------------------
    def inject(self, **kwargs) -> Injection:
        injection = Injection(**kwargs)
        with self.lock:
            self.injections.append(injection)
        return injection

    def _take_injection(self, method: str, zone: str | None) -> Injection | None:
        self.calls.append((method, zone))
        for injection in self.injections:
            if injection.method == method and injection.zone in (None, zone) and injection.times > 0:
                injection.times -= 1
                if injection.status is not None:
                    raise FakeHTTPError(injection.status, injection.reason, injection.message)
                return injection
        return None

    def _link(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _operation(self, project: str, zone: str | None, kind: str, target: str,
                   injection: Injection | None = None, on_done=None) -> dict:
        name = f"operation-{next(self._ids)}"
        scope = f"projects/{project}/zones/{zone}" if zone else f"projects/{project}/global"
        operation = {"kind": "compute#operation", "name": name, "operationType": kind,
                     "targetLink": self._link(target), "status": "RUNNING",
                     "selfLink": self._link(f"{scope}/operations/{name}"),
                     "_done_at": time.monotonic() + self.operation_delay_s,
                     "_on_done": on_done}
        if zone:
            operation["zone"] = self._link(f"projects/{project}/zones/{zone}")
        if injection is not None and injection.operation_code:
            operation["_error"] = {"errors": [{"code": injection.operation_code,
                                               "message": injection.message}]}
        self.operations[name] = operation
        return self._render_operation(operation)

    def _advance(self) -> None:
        now = time.monotonic()
        for operation in self.operations.values():
            if operation["status"] != "DONE" and now >= operation["_done_at"]:
                operation["status"] = "DONE"
                if "_error" in operation:
                    operation["error"] = operation["_error"]
                elif operation["_on_done"] is not None:
                    operation["_on_done"]()

    @staticmethod
    def _render_operation(operation: dict) -> dict:
        return {key: value for key, value in operation.items() if not key.startswith("_")}

    def operation(self, name: str, wait: bool = False) -> dict:
        deadline = time.monotonic() + 2.0
        while True:
            with self.lock:
                self._advance()
                if name not in self.operations:
                    raise FakeHTTPError(404, "notFound", f"operation {name} not found")
                operation = self.operations[name]
                if not wait or operation["status"] == "DONE" or time.monotonic() > deadline:
                    return self._render_operation(operation)
            time.sleep(0.01)

    # -- instances ----------------------------------------------------------------------
    def insert_instance(self, project: str, zone: str, body: dict) -> dict:
        with self.lock:
            self._advance()
            injection = self._take_injection("instances.insert", zone)
            name = body.get("name", "")
            if not NAME_RE.match(name):
                raise FakeHTTPError(400, "invalid", f"Invalid value for field 'resource.name': '{name}'")
            machine = str(body.get("machineType", ""))
            match = re.search(r"zones/([^/]+)/machineTypes/([^/]+)$", machine)
            if not match or match.group(1) != zone or match.group(2) not in MACHINE_TYPES:
                raise FakeHTTPError(400, "invalid", f"Invalid value for field 'resource.machineType': '{machine}'")
            for key, value in (body.get("labels") or {}).items():
                if not is_valid_label(key, value):
                    raise FakeHTTPError(400, "invalid", f"Invalid label {key}={value}")
            if len(body.get("labels") or {}) > 64:
                raise FakeHTTPError(400, "invalid", "too many labels")
            if (project, zone, name) in self.instances:
                raise FakeHTTPError(409, "alreadyExists", f"The resource '{name}' already exists")
            internal_ip, external_ip = self._allocate_ips()
            interfaces = []
            for index, interface in enumerate(body.get("networkInterfaces") or [{}]):
                rendered = dict(interface, networkIP=internal_ip, name=f"nic{index}")
                rendered["accessConfigs"] = [dict(access, natIP=external_ip)
                                             for access in interface.get("accessConfigs", [])]
                interfaces.append(rendered)
            instance = dict(body, id=str(next(self._ids)), status="PROVISIONING",
                            zone=self._link(f"projects/{project}/zones/{zone}"),
                            networkInterfaces=interfaces, labels=dict(body.get("labels") or {}),
                            selfLink=self._link(f"projects/{project}/zones/{zone}/instances/{name}"))
            instance["labelFingerprint"] = fingerprint(instance["labels"])
            instance["metadata"] = dict(body.get("metadata") or {})
            instance["metadata"]["fingerprint"] = fingerprint(instance["metadata"].get("items"))
            failed = injection is not None and injection.operation_code
            if not failed:
                self.instances[(project, zone, name)] = instance

            def running():
                if self.instances.get((project, zone, name)) is instance:
                    instance["status"] = "RUNNING"
            return self._operation(project, zone, "insert", f"projects/{project}/zones/{zone}/instances/{name}",
                                   injection, running)

    def _allocate_ips(self) -> tuple[str, str]:
        if not self.ip_pool:
            number = next(self._ips)
            return f"10.128.{number // 250}.{number % 250}", f"192.0.2.{number % 250}"
        used = {instance["networkInterfaces"][0]["networkIP"]
                for instance in self.instances.values() if instance.get("networkInterfaces")}
        for internal_ip, external_ip in self.ip_pool:
            if internal_ip not in used:
                return internal_ip, external_ip
        raise FakeHTTPError(503, "ZONE_RESOURCE_POOL_EXHAUSTED", "no free address in the pool")

    def _instance(self, project: str, zone: str, name: str) -> dict:
        self._advance()
        try:
            return self.instances[(project, zone, name)]
        except KeyError:
            raise FakeHTTPError(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found") from None

    def get_instance(self, project: str, zone: str, name: str) -> dict:
        with self.lock:
            self._take_injection("instances.get", zone)
            return json.loads(json.dumps(self._instance(project, zone, name)))

    def list_instances(self, project: str, zone: str, filter_text: str | None,
                       max_results: int | None, page_token: str | None) -> dict:
        with self.lock:
            self._advance()
            self._take_injection("instances.list", zone)
            terms = parse_filter(filter_text or "")
            names = sorted(name for (p, z, name) in self.instances if (p, z) == (project, zone))
            matching = [self.instances[(project, zone, name)] for name in names
                        if all(term(self.instances[(project, zone, name)]) for term in terms)]
            size = min(max_results or 500, self.max_page_size)
            start = int(page_token or 0)
            page = matching[start:start + size]
            result = {"kind": "compute#instanceList", "items": json.loads(json.dumps(page))}
            if start + size < len(matching):
                result["nextPageToken"] = str(start + size)
            if not page:
                del result["items"]
            return result

    def aggregated_instances(self, project: str, filter_text: str | None,
                             max_results: int | None, page_token: str | None) -> dict:
        """instances.aggregatedList: every zone's matching instances, paged across zones."""
        with self.lock:
            self._advance()
            self._take_injection("instances.aggregatedList", None)
            terms = parse_filter(filter_text or "")
            keys = sorted((zone, name) for (p, zone, name) in self.instances if p == project)
            matching = [(zone, self.instances[(project, zone, name)]) for zone, name in keys
                        if all(term(self.instances[(project, zone, name)]) for term in terms)]
            size = min(max_results or 500, self.max_page_size)
            start = int(page_token or 0)
            items: dict[str, dict] = {}
            for zone, instance in matching[start:start + size]:
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(
                    json.loads(json.dumps(instance)))
            result = {"kind": "compute#instanceAggregatedList", "items": items}
            if start + size < len(matching):
                result["nextPageToken"] = str(start + size)
            return result

    def delete_instance(self, project: str, zone: str, name: str) -> dict:
        with self.lock:
            injection = self._take_injection("instances.delete", zone)
            instance = self._instance(project, zone, name)
            instance["status"] = "STOPPING"

            def gone():
                if self.instances.get((project, zone, name)) is instance:
                    del self.instances[(project, zone, name)]
            return self._operation(project, zone, "delete", f"projects/{project}/zones/{zone}/instances/{name}",
                                   injection, gone)

    def set_labels(self, project: str, zone: str, name: str, body: dict) -> dict:
        with self.lock:
            injection = self._take_injection("instances.setLabels", zone)
            instance = self._instance(project, zone, name)
            if body.get("labelFingerprint") != instance["labelFingerprint"]:
                raise FakeHTTPError(412, "conditionNotMet",
                                    "Labels fingerprint either invalid or resource labels have changed")
            labels = dict(body.get("labels") or {})
            for key, value in labels.items():
                if not is_valid_label(key, value):
                    raise FakeHTTPError(400, "invalid", f"Invalid label {key}={value}")
            instance["labels"] = labels
            instance["labelFingerprint"] = fingerprint(labels)
            return self._operation(project, zone, "setLabels", f"projects/{project}/zones/{zone}/instances/{name}",
                                   injection)

    def set_metadata(self, project: str, zone: str, name: str, body: dict) -> dict:
        with self.lock:
            injection = self._take_injection("instances.setMetadata", zone)
            instance = self._instance(project, zone, name)
            if body.get("fingerprint") != instance["metadata"]["fingerprint"]:
                raise FakeHTTPError(412, "conditionNotMet",
                                    "Metadata fingerprint either invalid or metadata has changed")
            items = list(body.get("items") or [])
            if sum(len(str(item.get("value", ""))) for item in items) > 512 * 1024:
                raise FakeHTTPError(400, "invalid", "metadata too large")
            instance["metadata"] = {"items": items, "fingerprint": fingerprint(items)}
            return self._operation(project, zone, "setMetadata", f"projects/{project}/zones/{zone}/instances/{name}",
                                   injection)

    def change_labels_behind_our_back(self, project: str, zone: str, name: str, **labels) -> None:
        """Another client changes labels: the fingerprint the provider read goes stale."""
        with self.lock:
            instance = self._instance(project, zone, name)
            instance["labels"].update(labels)
            instance["labelFingerprint"] = fingerprint(instance["labels"])

    # -- firewalls ----------------------------------------------------------------------
    def firewall(self, project: str, name: str) -> dict:
        with self.lock:
            if (project, name) not in self.firewalls:
                raise FakeHTTPError(404, "notFound", f"firewall {name} not found")
            return json.loads(json.dumps(self.firewalls[(project, name)]))

    def insert_firewall(self, project: str, body: dict) -> dict:
        with self.lock:
            self._take_injection("firewalls.insert", None)
            name = body.get("name", "")
            if not NAME_RE.match(name):
                raise FakeHTTPError(400, "invalid", f"bad firewall name {name}")
            if (project, name) in self.firewalls:
                raise FakeHTTPError(409, "alreadyExists", f"firewall {name} already exists")
            self.firewalls[(project, name)] = dict(
                body, selfLink=self._link(f"projects/{project}/global/firewalls/{name}"))
            return self._operation(project, None, "insert", f"projects/{project}/global/firewalls/{name}")

    def patch_firewall(self, project: str, name: str, body: dict) -> dict:
        with self.lock:
            self._take_injection("firewalls.patch", None)
            current = self.firewalls.get((project, name))
            if current is None:
                raise FakeHTTPError(404, "notFound", f"firewall {name} not found")
            current.update(body)
            return self._operation(project, None, "patch", f"projects/{project}/global/firewalls/{name}")

    def delete_firewall(self, project: str, name: str) -> dict:
        with self.lock:
            self._take_injection("firewalls.delete", None)
            if self.firewalls.pop((project, name), None) is None:
                raise FakeHTTPError(404, "notFound", f"firewall {name} not found")
            return self._operation(project, None, "delete", f"projects/{project}/global/firewalls/{name}")

    # -- catalogue ----------------------------------------------------------------------
    def machine_type(self, project: str, zone: str, name: str) -> dict:
        if name not in MACHINE_TYPES:
            raise FakeHTTPError(404, "notFound", f"machine type {name} not found")
        return dict(MACHINE_TYPES[name], name=name, zone=zone, kind="compute#machineType")

    def image_from_family(self, project: str, family: str) -> dict:
        with self.lock:
            self._take_injection("images.getFromFamily", None)
        image = self.image_families.get((project, family))
        if image is None:
            raise FakeHTTPError(404, "notFound", f"family {family} not found in {project}")
        return {"name": image, "family": family,
                "selfLink": self._link(f"projects/{project}/global/images/{image}")}


def parse_filter(text: str):
    """The GCE filter expressions we use: `labels.KEY = "VALUE"`, `name = ...`,
    `status != ...`, joined by AND or spaces, optionally in parentheses."""
    terms = []
    for match in re.finditer(r'([a-zA-Z][\w.-]*)\s*(!=|=)\s*(?:"([^"]*)"|([^\s()]+))', text):
        field, operator, quoted, bare = match.groups()
        expected = quoted if quoted is not None else bare

        def term(resource, field=field, operator=operator, expected=expected):
            if field.startswith("labels."):
                actual = (resource.get("labels") or {}).get(field[len("labels."):])
            else:
                actual = resource.get(field)
            return (actual == expected) if operator == "=" else (actual != expected)
        terms.append(term)
    if text.strip() and not terms:
        raise FakeHTTPError(400, "invalid", f"Invalid value for field 'filter': '{text}'")
    return terms
