"""Building gcp cluster configs and providers that talk to a FakeGCE server."""
from __future__ import annotations

from launcher.config.model import AuthConfig, ClusterConfig, NodeTypeConfig
from launcher.providers.gcp.client import GCEClient
from launcher.providers.gcp.node_provider import GCPProvider

PROJECT = "corral-test-1"
REGION = "us-central1"
ZONES = ["us-central1-a", "us-central1-b"]
HEAD_TYPE = "head"
WORKER_TYPE = "cpu"


def provider_block(fake, **extra) -> dict:
    block = {"type": "gcp", "project_id": PROJECT, "region": REGION,
             "availability_zone": ",".join(ZONES), "use_internal_ips": False,
             "ssh_ingress_cidrs": ["198.51.100.7/32"], "network": "default",
             "compute_endpoint": fake.compute_endpoint, "operation_timeout_s": 10}
    block.update(extra)
    return block


def gcp_config(fake, cluster_name: str = "demo", node_types: dict | None = None,
               auth: AuthConfig | None = None, **provider_extra) -> ClusterConfig:
    node_types = node_types or {
        HEAD_TYPE: NodeTypeConfig(name=HEAD_TYPE, node_config={"machineType": "e2-small"},
                                  resources={}),
        WORKER_TYPE: NodeTypeConfig(name=WORKER_TYPE,
                                    node_config={"machineType": "n2-standard-4"},
                                    resources={}, min_workers=0, max_workers=4),
    }
    return ClusterConfig(cluster_name=cluster_name, provider=provider_block(fake, **provider_extra),
                         auth=auth or AuthConfig(ssh_user="ubuntu"),
                         available_node_types=node_types, head_node_type=HEAD_TYPE,
                         max_workers=4)


def fast_client(config) -> GCEClient:
    """A client whose retry back-off and polling are short (tests stay quick)."""
    client = GCEClient(config.provider)
    client.backoff_base_s = 0.01
    client.backoff_max_s = 0.05
    client.poll_interval_s = 0.01
    return client


def make_provider(config) -> GCPProvider:
    return GCPProvider(config, client=fast_client(config))
