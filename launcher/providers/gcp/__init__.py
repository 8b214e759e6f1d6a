"""The gcp provider: Compute Engine nodes through google-api-python-client.

Modules: node_provider (GCPProvider), setup (bootstrap/purge: SSH key, firewall rules,
head service account, default image, resources), iam_setup (least-privilege role),
instance_body (node_config -> instances.insert), labels (tags <-> labels), client (API
calls, retries, operations), errors (API failures -> launcher.errors), naming.
"""
from launcher.providers.gcp.node_provider import GCPProvider

__all__ = ["GCPProvider"]
