"""A small stateful fake of the Compute Engine REST API (plus the bits of IAM and Resource
Manager corral calls), on 127.0.0.1, for the real google-api-python-client to talk to.

    with FakeGCE() as fake:          # fake.compute_endpoint -> http://127.0.0.1:PORT/compute/v1/
        fake.state.inject(method="instances.insert", zone="us-central1-a",
                          operation_code="ZONE_RESOURCE_POOL_EXHAUSTED")

Only what corral uses is implemented; unknown routes answer 404 so a missing piece shows
up as a clear test failure.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from tests.gcp import fake_iam
from tests.gcp.fake_gce_state import FakeGCEState, FakeHTTPError

P = r"(?P<project>[^/]+)"
Z = r"(?P<zone>[^/]+)"
N = r"(?P<name>[^/]+)"
C = "/compute/v1/projects/" + P
ROUTES = [
    ("POST", C + "/zones/" + Z + "/instances", "insert_instance"),
    ("GET", C + "/zones/" + Z + "/instances", "list_instances"),
    ("GET", C + "/aggregated/instances", "aggregated_instances"),
    ("GET", C + "/zones/" + Z + "/instances/" + N, "get_instance"),
    ("DELETE", C + "/zones/" + Z + "/instances/" + N, "delete_instance"),
    ("POST", C + "/zones/" + Z + "/instances/" + N + "/setLabels", "set_labels"),
    ("POST", C + "/zones/" + Z + "/instances/" + N + "/setMetadata", "set_metadata"),
    ("GET", C + "/zones/" + Z + "/operations/" + N, "zone_operation"),
    ("POST", C + "/zones/" + Z + "/operations/" + N + "/wait", "zone_operation_wait"),
    ("GET", C + "/global/operations/" + N, "zone_operation"),
    ("POST", C + "/global/operations/" + N + "/wait", "zone_operation_wait"),
    ("GET", C + "/global/firewalls/" + N, "get_firewall"),
    ("POST", C + "/global/firewalls", "insert_firewall"),
    ("PATCH", C + "/global/firewalls/" + N, "patch_firewall"),
    ("DELETE", C + "/global/firewalls/" + N, "delete_firewall"),
    ("GET", C + "/zones/" + Z + "/machineTypes/" + N, "machine_type"),
    ("GET", C + "/global/images/family/" + N, "image_from_family"),
    ("GET", r"/v1/(?P<name>projects/[^/]+/roles/[^/]+)", "get_role"),
    ("POST", r"/v1/(?P<parent>projects/[^/]+)/roles", "create_role"),
    ("PATCH", r"/v1/(?P<name>projects/[^/]+/roles/[^/]+)", "patch_role"),
    ("GET", r"/v1/(?P<name>projects/[^/]+/serviceAccounts/[^/]+)", "get_service_account"),
    ("POST", r"/v1/(?P<parent>projects/[^/]+)/serviceAccounts", "create_service_account"),
    ("POST", r"/v1/projects/" + P + ":getIamPolicy", "get_policy"),
    ("POST", r"/v1/projects/" + P + ":setIamPolicy", "set_policy"),
]
COMPILED = [(method, re.compile(pattern + "$"), handler) for method, pattern, handler in ROUTES]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms stalls
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - quiet test output
        pass

    def _respond(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        for route_method, pattern, handler in COMPILED:
            match = pattern.match(path)
            if route_method == method and match:
                try:
                    result = getattr(self.server.api, handler)(query=query, body=body,
                                                               **match.groupdict())
                except FakeHTTPError as error:
                    self._respond(error.status, {"error": {
                        "code": error.status, "message": error.message,
                        "errors": [{"reason": error.reason, "domain": "global",
                                    "message": error.message}]}})
                    return
                self._respond(200, result)
                return
        self._respond(404, {"error": {"code": 404, "message": f"no fake route {method} {path}",
                                      "errors": [{"reason": "notFound"}]}})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")


class _Api:
    """Route handlers: unpack the request and call the state."""

    def __init__(self, state: FakeGCEState):
        self.state = state

    def insert_instance(self, project, zone, query, body):
        return self.state.insert_instance(project, zone, body)

    def list_instances(self, project, zone, query, body):
        max_results = int(query["maxResults"]) if "maxResults" in query else None
        return self.state.list_instances(project, zone, query.get("filter"), max_results,
                                         query.get("pageToken"))

    def aggregated_instances(self, project, query, body):
        max_results = int(query["maxResults"]) if "maxResults" in query else None
        return self.state.aggregated_instances(project, query.get("filter"), max_results,
                                               query.get("pageToken"))

    def get_instance(self, project, zone, name, query, body):
        return self.state.get_instance(project, zone, name)

    def delete_instance(self, project, zone, name, query, body):
        return self.state.delete_instance(project, zone, name)

    def set_labels(self, project, zone, name, query, body):
        return self.state.set_labels(project, zone, name, body)

    def set_metadata(self, project, zone, name, query, body):
        return self.state.set_metadata(project, zone, name, body)

    def zone_operation(self, project, name, query, body, zone=None):
        return self.state.operation(name)

    def zone_operation_wait(self, project, name, query, body, zone=None):
        return self.state.operation(name, wait=True)

    def get_firewall(self, project, name, query, body):
        return self.state.firewall(project, name)

    def insert_firewall(self, project, query, body):
        return self.state.insert_firewall(project, body)

    def patch_firewall(self, project, name, query, body):
        return self.state.patch_firewall(project, name, body)

    def delete_firewall(self, project, name, query, body):
        return self.state.delete_firewall(project, name)

    def machine_type(self, project, zone, name, query, body):
        return self.state.machine_type(project, zone, name)

    def image_from_family(self, project, name, query, body):
        return self.state.image_from_family(project, name)

    def get_role(self, name, query, body):
        return fake_iam.get_role(self.state, name)

    def create_role(self, parent, query, body):
        return fake_iam.create_role(self.state, parent, body)

    def patch_role(self, name, query, body):
        return fake_iam.patch_role(self.state, name, query.get("updateMask", ""), body)

    def get_service_account(self, name, query, body):
        return fake_iam.get_service_account(self.state, name)

    def create_service_account(self, parent, query, body):
        return fake_iam.create_service_account(self.state, parent, body)

    def get_policy(self, project, query, body):
        return fake_iam.get_policy(self.state, project)

    def set_policy(self, project, query, body):
        return fake_iam.set_policy(self.state, project, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: _Api


class FakeGCE:
    """Start with `with FakeGCE() as fake:` (or start()/stop()); always stopped on exit."""

    def __init__(self, operation_delay_s: float = 0.05):
        self.state = FakeGCEState(operation_delay_s=operation_delay_s)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "FakeGCE":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = _Api(self.state)
        self.state.base_url = f"{self.origin}compute/v1/"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def compute_endpoint(self) -> str:
        return f"{self.origin}compute/v1/"

    def __enter__(self) -> "FakeGCE":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
