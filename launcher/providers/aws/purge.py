"""`corral down --purge` for AWS: terminate whatever is left of the cluster (cached stopped
nodes included), then remove the security group, key pair and head instance profile that
corral made for it. Resources the user named in the config are never removed."""
from __future__ import annotations

from launcher.providers.aws import iam as aws_iam
from launcher.providers.aws import keys, network
from launcher.providers.aws.errors import aws_errors
from launcher.providers.aws.session import AWSClients

PURGE_WAIT_S = 600.0


def purge_cluster(config, clients: AWSClients | None = None) -> list[str]:
    """Returns one line per removed resource."""
    from launcher.providers.aws.node_provider import (LIVE_STATES, STOPPED_STATES,
                                                      AWSProvider)
    clients = clients or AWSClients(config.provider["region"])
    provider = AWSProvider(config, clients=clients)
    removed: list[str] = []
    alive = [instance["InstanceId"]
             for instance in provider.instances_in_states(LIVE_STATES + STOPPED_STATES)]
    if alive:
        with aws_errors(f"terminate {len(alive)} node(s)"):
            clients.ec2.terminate_instances(InstanceIds=alive)
        removed.append(f"{len(alive)} node(s): {', '.join(sorted(alive))}")
    leaving = [instance["InstanceId"]
               for instance in provider.instances_in_states(("shutting-down",))]
    provider.wait_for_states(sorted(set(alive + leaving)), {"terminated"}, PURGE_WAIT_S)
    removed += network.delete_security_group(clients.ec2, config)
    removed += keys.delete_key_pair(clients.ec2, config)
    if not config.provider.get("iam_instance_profile"):
        removed += aws_iam.delete_head_profile(clients.iam, config.cluster_name,
                                               config.provider["region"])
    return removed
