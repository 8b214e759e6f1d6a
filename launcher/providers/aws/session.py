"""boto3 clients for one region, with botocore's standard retry mode (throttling and
transient errors are retried with backoff before anything reaches us).

The endpoint comes from the usual AWS settings (AWS_ENDPOINT_URL and friends), which is
how the tests point everything at moto's server.
"""
from __future__ import annotations

import threading

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config

from launcher.providers.aws.errors import aws_errors

RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 8},
                      connect_timeout=10, read_timeout=60)


_LOADER_LOCK = threading.Lock()
_LOADER: botocore.loaders.Loader | None = None


def _shared_loader() -> botocore.loaders.Loader:
    """One botocore data loader per process: the EC2 service model alone is megabytes of
    JSON, parsed once instead of once per session."""
    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        return _LOADER


def new_session(region: str) -> boto3.session.Session:
    core = botocore.session.Session()
    core.register_component("data_loader", _shared_loader())
    return boto3.session.Session(botocore_session=core, region_name=region)


class AWSClients:
    """Lazily created, thread-safe boto3 clients (ec2, iam, ssm, sts) for one region."""

    def __init__(self, region: str):
        self.region = region
        self._lock = threading.Lock()
        self._session = None
        self._clients: dict[str, object] = {}

    def client(self, service: str):
        with self._lock:
            if service not in self._clients:
                with aws_errors(f"connect to {service}"):
                    if self._session is None:
                        self._session = new_session(self.region)
                    self._clients[service] = self._session.client(service, config=RETRY_CONFIG)
            return self._clients[service]

    @property
    def ec2(self):
        return self.client("ec2")

    @property
    def iam(self):
        return self.client("iam")

    @property
    def ssm(self):
        return self.client("ssm")
