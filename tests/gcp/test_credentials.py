"""Where credentials come from, and the message when there are none. Run in a child
process with a clean environment so nothing of this machine's gcloud set-up leaks in and
no metadata server is ever probed (NO_GCE_CHECK)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from launcher.errors import ProviderAuthError
from launcher.providers.gcp.client import GCEClient, load_credentials

pytestmark = pytest.mark.timeout(60)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_isolated(tmp_path, code: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
           "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"), "NO_GCE_CHECK": "true",
           "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
           "CORRAL_HOME": str(tmp_path / "corral"), "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=50)


def test_missing_credentials_message(tmp_path):
    result = run_isolated(tmp_path, """
        from launcher.errors import ProviderAuthError
        from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
        from launcher.providers.gcp import GCPProvider
        config = ClusterConfig(
            cluster_name="demo",
            provider={"type": "gcp", "project_id": "corral-test-1", "region": "us-central1"},
            auth=AuthConfig(), available_node_types={"head": NodeTypeConfig(
                name="head", node_config={"machineType": "e2-small"}, resources={})},
            head_node_type="head")
        try:
            GCPProvider(config).non_terminated_nodes()
        except ProviderAuthError as error:
            print("AUTH:", error)
    """)
    assert result.returncode == 0, result.stderr
    assert "AUTH: no Google Cloud credentials found" in result.stdout
    assert "gcloud auth application-default login" in result.stdout
    assert "GOOGLE_APPLICATION_CREDENTIALS" in result.stdout
    assert "provider.credentials_file" in result.stdout
    assert "Traceback" not in result.stderr


def test_unreadable_credentials_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ProviderAuthError, match="nope.json"):
        load_credentials({"project_id": "p", "credentials_file": str(missing)})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "service_account"}))
    with pytest.raises(ProviderAuthError, match="bad.json"):
        load_credentials({"project_id": "p", "credentials_file": str(bad)})


def test_service_account_file_is_used(tmp_path, fake_gce):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "corral-test-1", "private_key_id": "1",
        "private_key": pem, "client_email": "robot@corral-test-1.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "http://127.0.0.1:9/token"}))
    credentials = load_credentials({"project_id": "corral-test-1",
                                    "compute_endpoint": fake_gce.compute_endpoint,
                                    "credentials_file": str(path)})
    assert credentials.service_account_email == "robot@corral-test-1.iam.gserviceaccount.com"


def test_custom_endpoint_without_file_is_anonymous(fake_gce):
    from google.auth.credentials import AnonymousCredentials
    client = GCEClient({"project_id": "corral-test-1", "compute_endpoint": fake_gce.compute_endpoint})
    assert isinstance(client.credentials, AnonymousCredentials)
    assert client.compute._baseUrl == fake_gce.compute_endpoint
    assert client.iam._baseUrl == fake_gce.origin
