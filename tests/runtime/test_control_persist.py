"""The control service's saved state (runtime.control.persist) on a real ControlService
(bound to loopback with real keys, its requests handled without a network): what a
restart must resume, what it rebuilds, what it refuses; and the monitor's saved state
(autoscaler.tracker) across a restart."""
from __future__ import annotations

import json
import logging
import stat
import time

import pytest

from autoscaler.tracker import MonitorState
from runtime.control import persist as control_persist
from runtime.control.service import ControlService
from runtime.node.keys import create_cluster_keys
from runtime.protocol.version import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(60)
NODE = dict(node_type="cpu", address="127.0.0.1:4000", ipc="ipc:///x/agent",
            hostname="h", resources_total={"CPU": 2.0}, protocol_version=PROTOCOL_VERSION)
DRIVER = dict(protocol_version=PROTOCOL_VERSION)


@pytest.fixture
def keys(tmp_path):
    return create_cluster_keys(tmp_path / "keys")


@pytest.fixture
def services(tmp_path, keys):
    made = []

    def make(resume: bool = False) -> ControlService:
        service = ControlService("tcp://127.0.0.1:0", keys, 5.0, {"cpu": {"CPU": 2.0}},
                                 state_file=tmp_path / control_persist.STATE_FILE,
                                 cluster_key=keys.public.decode())
        made.append(service)
        if resume:
            service.resume()
        return service
    yield make
    for service in made:
        service.sock.close(0)
        service.ctx.term()


def request(service: ControlService, method: str, identity=b"D1", **kwargs):
    """One request as the loop handles it: handled, saved, then answered."""
    service._handle(identity, b"rpc", (1, method, kwargs))
    service.save_state()
    (_, (_, ok, result)), = service.held_replies
    service.held_replies.clear()
    assert ok, result
    return result


def test_a_restarted_service_resumes_nodes_drivers_and_actors(services, tmp_path):
    first = services()
    request(first, "register_node", b"Aw1", node_id="w1", **NODE)
    request(first, "register_node", b"Aw2", node_id="w2", **NODE)
    request(first, "register_driver", b"Dd1", driver_id="d1", **DRIVER)
    actor_id = b"\x00\xffactor-id-bytes"
    request(first, "register_actor", name="counter", info={
        "actor_id": actor_id, "node_id": "w1", "owner": "d1", "detached": True,
        "class_name": "Counter"})
    request(first, "actor_up", actor_id=actor_id, info={"state": "up", "node_id": "w1",
                                                        "epoch": 2, "owner": "d1",
                                                        "detached": True})
    request(first, "drain_nodes", node_ids=["w2"])
    request(first, "kv_put", key="k", value=b"\x01\x02")
    request(first, "request_resources", bundles=[{"CPU": 4.0}])
    path = tmp_path / control_persist.STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not first.dirty

    second = services(resume=True)
    assert set(second.nodes) == {"w1", "w2"}
    w1, w2 = second.nodes["w1"], second.nodes["w2"]
    assert w1.alive and w1.identity == b"Aw1" and w1.resources_total == {"CPU": 2.0}
    assert w2.draining and not w1.draining
    assert 0 < w2.drain_until - time.monotonic() <= first.drain_lease_s
    # rebuilt from heartbeats, not restored: nothing free and not idle until then
    assert w1.resources_available == {} and w1.idle_since_s is None
    assert second.drivers["d1"].identity == b"Dd1"
    assert second.actors["counter"]["actor_id"] == actor_id
    assert second.actor_nodes[actor_id]["epoch"] == 2
    assert second.kv == {"k": b"\x01\x02"}
    assert second.request_bundles == [{"CPU": 4.0}]
    assert second.node_types == {"cpu": {"CPU": 2.0}}
    # a known agent's heartbeat is answered as known: no re-registration needed
    beat = request(second, "heartbeat", b"Aw1", node_id="w1",
                   resources_available={"CPU": 1.0}, idle_since_s=None, queued_demand={})
    assert beat["known"] is True
    assert request(second, "lookup_actor", name="counter")["node_id"] == "w1"


def test_removed_nodes_stay_out_and_gone_drivers_stay_gone(services):
    first = services()
    request(first, "register_node", b"Aw1", node_id="w1", **NODE)
    request(first, "register_driver", b"Dd1", driver_id="d1", **DRIVER)
    request(first, "register_actor", name="mine", info={
        "actor_id": b"a1", "node_id": "w1", "owner": "d1", "detached": False})
    request(first, "remove_nodes", node_ids=["w1"])
    request(first, "driver_exit", driver_id="d1")
    second = services(resume=True)
    assert request(second, "register_node", b"Aw1", node_id="w1", **NODE)["removed"]
    assert "d1" not in second.drivers and "d1" in second.dead_drivers
    assert second.actors == {}          # a non-detached actor went with its driver
    assert second._load()["nodes"] == []


def test_a_dead_node_found_by_the_liveness_check_is_saved_dead(services):
    first = services()
    request(first, "register_node", b"Aw1", node_id="w1", **NODE)
    first._check_liveness(time.monotonic() + 60)
    first.save_state()
    assert services(resume=True).nodes["w1"].alive is False


@pytest.mark.parametrize("damage", ["truncated", "another cluster", "a list"])
def test_an_unusable_state_file_is_set_aside_not_half_used(services, tmp_path, damage):
    first = services()
    request(first, "register_node", b"Aw1", node_id="w1", **NODE)
    path = tmp_path / control_persist.STATE_FILE
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[:len(text) // 2])
    elif damage == "another cluster":
        path.write_text(text.replace(first.cluster_key, "x" * 40))
    else:
        path.write_text("[1, 2]")
    second = services()
    assert second.resume() is False
    assert second.nodes == {}
    assert not path.exists()
    assert path.with_name(path.name + ".unusable").read_text() != ""


def test_a_fresh_start_replaces_an_older_state(services, tmp_path):
    first = services()
    request(first, "register_node", b"Aw1", node_id="w1", **NODE)
    fresh = services()              # (runtime.control.service's main saves at once)
    fresh.dirty = True
    fresh.save_state()
    assert services(resume=True).nodes == {}


def test_a_disk_that_refuses_the_state_does_not_stop_the_service(services, tmp_path,
                                                                 caplog):
    caplog.set_level(logging.INFO, "corral.control")
    service = services()
    service.state_file = tmp_path / "missing-dir" / control_persist.STATE_FILE
    request(service, "register_node", b"Aw1", node_id="w1", **NODE)   # answered anyway
    assert service.dirty and service.save_failure
    assert "cannot save the control state" in caplog.text
    service.state_file = tmp_path / control_persist.STATE_FILE
    service.save_state()
    assert not service.dirty and "saved again" in caplog.text


def test_kv_values_json_cannot_hold_are_left_out(services, caplog):
    first = services()
    request(first, "kv_put", key="fine", value="text")
    request(first, "kv_put", key="odd", value={1, 2})
    assert services(resume=True).kv == {"fine": "text"}
    assert "not kept across restarts" in caplog.text


def test_the_monitor_keeps_since_when_nodes_wait_to_join(tmp_path):
    path = tmp_path / "autoscaler.state.json"
    state = MonitorState.load(path, "cfg")
    assert state.save_if_changed()
    written = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert state.save_if_changed() and path.stat().st_mtime_ns == written   # unchanged
    state.waiting_to_join_since["w-1"] = 1234.5
    assert state.save_if_changed()
    assert json.loads(path.read_text())["waiting_to_join_since"] == {"w-1": 1234.5}
    again = MonitorState.load(path, "cfg")
    assert again.waiting_to_join_since == {"w-1": 1234.5}
    assert MonitorState.load(path, "another config").waiting_to_join_since == {}
