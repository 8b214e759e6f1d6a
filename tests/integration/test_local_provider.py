"""The `local` provider on real sshd hosts (tests/testhosts.py): host 0 is the head IP,
hosts 1-3 the worker IPs. Claims live on the hosts themselves, so a second provider
instance (as on the head) sees the same nodes; terminate leaves nothing of ours behind."""
from __future__ import annotations

import json

import pytest

from launcher import tags as T
from launcher.errors import CapacityError, NodeNotFoundError
from launcher.providers import make_provider
from launcher.providers.host_tags import DEFAULT_STATE_DIR
from launcher.providers.local import LocalProvider
from tests.contract.provider_local import HEAD_TYPE, WORKER_TYPE, local_config

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

HEAD_TAGS = {T.TAG_NODE_KIND: T.KIND_HEAD, T.TAG_NODE_TYPE: HEAD_TYPE}
WORKER_TAGS = {T.TAG_NODE_KIND: T.KIND_WORKER, T.TAG_NODE_TYPE: WORKER_TYPE}


@pytest.fixture
def make(test_hosts):
    """make(cluster_name, worker_ips=None, **provider_extra) -> LocalProvider, all closed
    (and their nodes terminated) at the end."""
    made = []

    def factory(cluster_name="onprem", worker_ips=None, **extra):
        hosts = test_hosts.hosts
        ips = [host.ip for host in hosts[1:]] if worker_ips is None else worker_ips
        config = local_config(cluster_name, hosts[0].ip, ips, test_hosts.ssh_user,
                              test_hosts.ssh_private_key, ssh_timeout_s=5.0, **extra)
        provider = make_provider(config)
        made.append(provider)
        return provider
    try:
        yield factory
    finally:
        try:
            for provider in made:
                provider.terminate_nodes([node.id for node in provider.non_terminated_nodes()])
        finally:
            for provider in made:
                provider.close()


def tag_file(host, state_dir=DEFAULT_STATE_DIR):
    completed = host.run(f"cat {state_dir}/tags.json")
    return json.loads(completed.stdout) if completed.returncode == 0 else None


def test_claims_are_seen_by_a_second_provider(make, test_hosts):
    laptop = make()
    assert isinstance(laptop, LocalProvider)
    head_host, *worker_hosts = test_hosts.hosts
    assert laptop.create_nodes(HEAD_TYPE, {}, HEAD_TAGS, 1) == [head_host.ip]
    workers = laptop.create_nodes(WORKER_TYPE, {}, {**WORKER_TAGS, "color": "red"}, 3)
    assert sorted(workers) == sorted(host.ip for host in worker_hosts)
    claim = tag_file(worker_hosts[0])
    assert claim["cluster_name"] == "onprem" and claim["kind"] == T.KIND_WORKER

    head = make()  # a fresh instance, e.g. the autoscaler on the head: same truth
    nodes = head.non_terminated_nodes()
    assert [node.id for node in nodes] == [head_host.ip, *[h.ip for h in worker_hosts]]
    assert nodes[0].kind == T.KIND_HEAD and nodes[0].node_type == HEAD_TYPE
    assert all(node.internal_ip == node.id and node.state == "running" for node in nodes)
    assert [n.id for n in head.non_terminated_nodes({"color": "red"})] == \
        [h.ip for h in worker_hosts]
    head.set_node_tags(worker_hosts[1].ip, {T.TAG_NODE_STATUS: T.STATUS_UP_TO_DATE})
    assert laptop.node(worker_hosts[1].ip).status == T.STATUS_UP_TO_DATE
    assert laptop.node(worker_hosts[1].ip).tags["color"] == "red"


def test_capacity_error_when_every_host_is_used(make, test_hosts):
    provider = make()
    provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 3)
    with pytest.raises(CapacityError, match="all 3 worker IPs are in use") as caught:
        provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    assert caught.value.free_count == 0 and caught.value.requested_count == 1
    assert caught.value.node_type == WORKER_TYPE
    provider.create_nodes(HEAD_TYPE, {}, HEAD_TAGS, 1)
    with pytest.raises(CapacityError, match="head IP"):
        provider.create_nodes(HEAD_TYPE, {}, HEAD_TAGS, 1)

    other = make("other-cluster")  # another cluster cannot take them either
    with pytest.raises(CapacityError):
        other.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    freed = test_hosts.hosts[2].ip
    provider.terminate_nodes([freed])
    assert other.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1) == [freed]
    assert freed not in [node.id for node in provider.non_terminated_nodes()]


def test_too_few_free_hosts_claims_nothing(make, test_hosts):
    provider = make()
    provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 2)
    with pytest.raises(CapacityError, match="only 1 of 3 worker IPs are free"):
        provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 2)
    assert len(provider.non_terminated_nodes()) == 2  # all or nothing


def test_terminate_frees_the_host_and_leaves_no_process(make, test_hosts):
    provider = make()
    first, second = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 2)
    host_of = {host.ip: host for host in test_hosts.hosts}
    for node_id in (first, second):
        runner = provider.command_runner(provider.node(node_id))
        # A double-forked daemon, and a process that only a runtime pid file names.
        runner.run("( sleep 300 >/dev/null 2>&1 </dev/null & ); mkdir -p $CORRAL_NODE_DIR/session"
                   " && ( env -i sleep 301 >/dev/null 2>&1 </dev/null & "
                   "echo $! > $CORRAL_NODE_DIR/session/agent.pid )", timeout_s=20, check=True)
        runner.run("echo secret > $CORRAL_NODE_DIR/keys.txt", timeout_s=20, check=True)
        assert len(host_of[node_id].processes()) == 2
    provider.terminate_nodes([first])
    assert host_of[first].processes() == []
    assert tag_file(host_of[first]) is None
    assert host_of[first].run("test -e /tmp/corral").returncode == 1
    assert len(host_of[second].processes()) == 2  # the other host is untouched
    assert [node.id for node in make().non_terminated_nodes()] == [second]
    provider.terminate_nodes([first])  # again: a no-op
    provider.terminate_nodes([second])
    assert host_of[second].processes() == []


def test_other_cluster_cannot_terminate_or_tag_my_nodes(make, test_hosts):
    mine = make("mine")
    theirs = make("theirs")
    [node_id] = mine.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    theirs.terminate_nodes([node_id])
    with pytest.raises(NodeNotFoundError):
        theirs.set_node_tags(node_id, {"x": "y"})
    assert mine.node(node_id) is not None
    assert theirs.non_terminated_nodes() == []
    mine.terminate_nodes(["10.0.0.1", "not-a-host"])  # ids outside the config: ignored


def test_unreachable_worker_is_skipped_not_fatal(make, test_hosts, caplog):
    reachable = [host.ip for host in test_hosts.hosts[1:3]]
    provider = make(worker_ips=[test_hosts.unreachable_ip, *reachable])
    workers = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 2)
    assert sorted(workers) == sorted(reachable)
    caplog.clear()
    with caplog.at_level("DEBUG", logger="launcher.providers.local"):
        assert [n.id for n in provider.non_terminated_nodes()] == reachable
    assert test_hosts.unreachable_ip in provider.unreachable
    # data for `up`/`status` to report once, not also logged by the provider
    assert not [r for r in caplog.records if test_hosts.unreachable_ip in r.getMessage()]
    with pytest.raises(CapacityError, match="unreachable") as caught:
        provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    assert caught.value.unreachable_ips == [test_hosts.unreachable_ip]


def test_state_dir_is_configurable(make, test_hosts):
    provider = make(state_dir="/tmp/elsewhere")
    [node_id] = provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    host = next(h for h in test_hosts.hosts if h.ip == node_id)
    assert tag_file(host, "/tmp/elsewhere")["cluster_name"] == "onprem"
    assert tag_file(host) is None


def test_racing_launchers_never_share_a_host(make, test_hosts):
    import threading
    laptop, head = make(), make()
    won, lost = [], []

    def grab(provider):
        try:
            won.extend(provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 2))
        except CapacityError:
            lost.append(provider)
    threads = [threading.Thread(target=grab, args=(p,)) for p in (laptop, head)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == len(set(won))  # no host given out twice
    assert len(won) + 2 * len(lost) == 4
    assert sorted(n.id for n in laptop.non_terminated_nodes()) == sorted(won)


def test_refused_claim_is_a_provider_error_not_capacity(make, test_hosts):
    from launcher.errors import ProviderError
    provider = make(worker_ips=[test_hosts.hosts[1].ip])
    test_hosts.hosts[1].run(f"mkdir -p /tmp/real && ln -s /tmp/real {DEFAULT_STATE_DIR}")
    with pytest.raises(ProviderError, match="not a directory owned by us") as caught:
        provider.create_nodes(WORKER_TYPE, {}, WORKER_TAGS, 1)
    assert not isinstance(caught.value, CapacityError)


def test_two_clusters_racing_never_share_a_host(make, test_hosts):
    import threading
    rounds = 3
    for round_index in range(rounds):
        mine, theirs = make(f"mine{round_index}"), make(f"theirs{round_index}")
        won: dict[str, list[str]] = {}

        def grab(provider):
            try:
                won[provider.cluster_name] = provider.create_nodes(WORKER_TYPE, {},
                                                                   WORKER_TAGS, 2)
            except CapacityError:
                won[provider.cluster_name] = []
        threads = [threading.Thread(target=grab, args=(p,)) for p in (mine, theirs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(len(ids) for ids in won.values()) == [0, 2]  # all or nothing
        by_ip = {host.ip: host for host in test_hosts.hosts}
        for cluster_name, ids in won.items():
            for ip in ids:
                assert tag_file(by_ip[ip])["cluster_name"] == cluster_name
        loser = next(name for name, ids in won.items() if not ids)
        assert not any((tag_file(host) or {}).get("cluster_name") == loser
                       for host in test_hosts.hosts)
        for provider in (mine, theirs):
            provider.terminate_nodes([node.id for node in provider.non_terminated_nodes()])


def test_set_node_tags_merges_on_the_host(make, test_hosts):
    provider = make()
    [node_id] = provider.create_nodes(WORKER_TYPE, {}, {**WORKER_TAGS, "color": "red"}, 1)
    other = make()  # e.g. the head's autoscaler, writing at the same time
    import threading
    writers = [threading.Thread(target=p.set_node_tags, args=(node_id, {f"k{i}": str(i)}))
               for i, p in enumerate((provider, other, provider, other))]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    tags = provider.node(node_id).tags
    assert tags["color"] == "red" and all(tags[f"k{i}"] == str(i) for i in range(4))
    assert tags[T.TAG_NODE_KIND] == T.KIND_WORKER
