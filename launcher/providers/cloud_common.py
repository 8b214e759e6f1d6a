"""Logic the cloud providers (aws, gcp) share: zone lists, launching across zones in order
of preference, filling node resources from the cloud's machine-type catalogue, naming
per-cluster cloud resources, and the notice for SSH opened to the whole internet.

Nothing here imports a cloud SDK; each provider passes in small callables.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys
import uuid
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from launcher.errors import CapacityError, ConfigError, ProviderError, QuotaError

Place = TypeVar("Place")

WORLD_CIDRS = ("0.0.0.0/0", "::/0")


def zone_list(value: str | Sequence[str] | None) -> list[str]:
    """`availability_zone`/`zone` as an ordered list: accepts a list or "a, b, c"."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    zones: list[str] = []
    for item in items:
        zone = str(item).strip()
        if zone and zone not in zones:
            zones.append(zone)
    return zones


def new_launch_token() -> str:
    """An idempotency token for one launch request (EC2 ClientToken, GCE requestId)."""
    return uuid.uuid4().hex


def launch_across_places(places: Sequence[Place], count: int,
                         launch: Callable[[Place, int], list[str]], *,
                         node_type: str, place_name: Callable[[Place], str] = str) -> list[str]:
    """Create `count` nodes, trying `places` (zones or subnets) in order.

    `launch(place, n)` creates up to n nodes there and returns their ids; it raises a
    ProviderError when it cannot. Errors with `try_elsewhere` (capacity, spot shortage,
    quota of that zone) move on to the next place; any other error is raised at once.
    When every place was tried and nodes are still missing, raises CapacityError (or
    QuotaError when every failure was a quota) naming each place and its cause; the ids
    that were created anyway are on the error as `created_ids`.
    """
    created: list[str] = []
    failures: list[tuple[str, ProviderError]] = []
    for place in places or [None]:
        remaining = count - len(created)
        if remaining <= 0:
            break
        try:
            created.extend(launch(place, remaining))
        except ProviderError as error:
            if not error.try_elsewhere:
                raise error.add_created_ids(created)
            failures.append((place_name(place) if place is not None else "default", error))
    if len(created) >= count:
        return created
    error_class = QuotaError if failures and all(
        isinstance(error, QuotaError) for _, error in failures) else CapacityError
    tried = [name for name, _ in failures]
    reasons = "; ".join(f"{name}: {error.cause or error}" for name, error in failures)
    raise error_class(
        f"could only create {len(created)} of {count} {node_type} nodes "
        f"(tried {', '.join(tried) or 'nothing'}): {reasons or 'no capacity reported'}",
        node_type=node_type, zone=",".join(tried) or None,
        cause=failures[-1][1].cause if failures else None, created_ids=created,
        failures=[(name, str(failure)) for name, failure in failures])


def resources_from_shape(vcpus: float, memory_mib: float, gpus: float = 0,
                         extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """A node type's resources from its machine shape: CPU, memory in bytes, GPU if any."""
    resources: dict[str, float] = {"CPU": int(vcpus) if float(vcpus).is_integer() else vcpus,
                                   "memory": int(memory_mib * 1024 * 1024)}
    if gpus:
        resources["GPU"] = int(gpus) if float(gpus).is_integer() else gpus
    resources.update(extra or {})
    return resources


def fill_node_resources(config, machine_type_of: Callable[[Mapping], str | None],
                        describe_machine_types: Callable[[list[str]], Mapping[str, Mapping]],
                        machine_type_key: str = "InstanceType"):
    """A new ClusterConfig where every node type with empty `resources` has them filled in
    from the cloud's description of its machine type.

    `machine_type_of(node_config)` names the machine type (None: leave the type alone);
    `describe_machine_types(names)` returns {name: resources} for all of them at once and
    raises ConfigError for a name the cloud does not know.
    """
    wanted = {name: machine_type_of(node_type.node_config)
              for name, node_type in config.available_node_types.items()
              if not node_type.resources}
    wanted = {name: machine for name, machine in wanted.items() if machine}
    if not wanted:
        return config
    described = describe_machine_types(sorted(set(wanted.values())))
    node_types = dict(config.available_node_types)
    for name, machine in wanted.items():
        if machine not in described:
            raise ConfigError(f"available_node_types.{name}.node_config.{machine_type_key}",
                              None, f"unknown machine type {machine!r}",
                              source=config.source_path)
        node_types[name] = dataclasses.replace(node_types[name],
                                               resources=dict(described[machine]))
    return config.replace(available_node_types=node_types)


def cluster_resource_name(prefix: str, cluster_name: str, suffix: str = "",
                          max_length: int = 64) -> str:
    """A cloud resource name for one cluster: prefix-cluster[-suffix], shortened with a
    stable hash when the cloud's length limit would be exceeded."""
    name = "-".join(part for part in (prefix, cluster_name, suffix) if part)
    if len(name) <= max_length:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[:max_length - len(digest) - 1].rstrip("-") + "-" + digest


def open_to_world(cidrs: Iterable[str]) -> list[str]:
    """The entries that open a port to the whole internet."""
    return [cidr for cidr in cidrs if cidr in WORLD_CIDRS]


def notice(message: str) -> None:
    """Tell the user something they must know (not an error), on stderr."""
    print(f"notice: {message}", file=sys.stderr, flush=True)


def ssh_open_notice(cidrs: Iterable[str], where: str) -> None:
    world = open_to_world(cidrs)
    if world:
        notice(f"SSH (port 22) of {where} is open to the whole internet "
               f"({', '.join(world)}) because ssh_ingress_cidrs says so; "
               "list only the networks you connect from to close it.")
