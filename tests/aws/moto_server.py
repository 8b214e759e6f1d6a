"""moto's server on loopback, with boto3 pointed at it through the environment.

`moto_server()` starts a ThreadedMotoServer on 127.0.0.1 (a free port), sets
AWS_ENDPOINT_URL and fake credentials (and turns off the instance-metadata lookup, so
nothing leaves loopback), and on exit restores the environment, wipes moto's state and
stops the server, even when the test failed.

Test harness helpers: `seed_public_parameter` puts a parameter under /aws/... into moto's
SSM (the API refuses those names; real AWS publishes them), `inject_client_error` makes a
botocore client fail chosen calls with a chosen error code before they are sent.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import urllib.request

from botocore.exceptions import ClientError

REGION = "us-west-2"
MOTO_ACCOUNT_ID = "123456789012"
ENV_NAMES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_PROFILE",
             "AWS_EC2_METADATA_DISABLED", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@dataclasses.dataclass
class MotoServer:
    url: str
    region: str

    def reset(self) -> None:
        """Forget every resource (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", data=b"",
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


@contextlib.contextmanager
def moto_server(region: str = REGION, tmp_dir: str | None = None):
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    saved = {name: os.environ.get(name) for name in ENV_NAMES}
    server.start()
    try:
        host, port = server.get_host_and_port()
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(name, None)
        empty = os.path.join(tmp_dir or "/nonexistent", "no-aws-config")
        os.environ.update(AWS_ENDPOINT_URL=f"http://{host}:{port}",
                          AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION=region, AWS_EC2_METADATA_DISABLED="true",
                          AWS_CONFIG_FILE=empty, AWS_SHARED_CREDENTIALS_FILE=empty)
        moto = MotoServer(url=f"http://{host}:{port}", region=region)
        try:
            yield moto
        finally:
            moto.reset()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
        if server._server is not None:  # stop() leaves the listening socket open
            server._server.server_close()


def seed_public_parameter(name: str, value: str, region: str = REGION) -> None:
    """Publish an /aws/... SSM parameter in moto (in-process server: same backend)."""
    from moto.ssm.models import Parameter, ssm_backends
    backend = ssm_backends[MOTO_ACCOUNT_ID][region]
    backend._parameters[name].append(Parameter(
        account_id=MOTO_ACCOUNT_ID, name=name, value=value, parameter_type="String",
        description=None, allowed_pattern=None, keyid=None,
        last_modified_date=datetime.datetime.now(datetime.timezone.utc), version=1,
        data_type="aws:ec2:image"))


def inject_client_error(client, operation: str, code: str, *, when=lambda params: True,
                        message: str = "injected by the test") -> list[dict]:
    """Make `client` fail `operation` (e.g. "RunInstances") with error `code` whenever
    `when(params)` is true (params: the call's API parameters), before the request is
    built or sent. Returns the list the hook appends
    each failed call's params to."""
    failed: list[dict] = []
    service = client.meta.service_model.service_name

    def hook(params, **_):
        if when(params):
            failed.append(dict(params))
            raise ClientError({"Error": {"Code": code, "Message": message}}, operation)
    client.meta.events.register(f"before-parameter-build.{service}.{operation}", hook)
    return failed



def record_calls(client, operation: str) -> list[dict]:
    """The API parameters of every `operation` call `client` makes from now on."""
    calls: list[dict] = []
    service = client.meta.service_model.service_name

    def hook(params, **_):
        calls.append(dict(params))
    client.meta.events.register(f"before-parameter-build.{service}.{operation}", hook)
    return calls
