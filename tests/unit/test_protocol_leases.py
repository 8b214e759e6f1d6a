"""The lease messages (runtime.protocol.leases): each record goes through frames.send
and frames.recv on a real ZeroMQ socket pair and comes back equal; a header that is not
its kind's record is MalformedMessageError."""
from __future__ import annotations

import pytest

from runtime.protocol import leases
from runtime.protocol.frames import MalformedMessageError
from runtime.protocol.kinds import Kind
from tests.unit.test_protocol_records import pair, round_trip  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


def test_lease_messages_round_trip(pair):  # noqa: F811
    request = leases.LeaseRequest(7, "driver1", {"CPU": 1.0}, 3)
    assert round_trip(pair, Kind.LEASE, tuple(request))[1] == request
    grant = leases.LeaseGrant(b"lease", "worker1", "ipc:///tmp/x/task-w.sock", None)
    reply = leases.LeaseReply(7, {"CPU": 1.0}, [tuple(grant)])
    decoded = round_trip(pair, Kind.LEASED, tuple(reply))[1]
    assert decoded.grants == [grant] and decoded.grants[0].direct == grant.direct
    not_now = round_trip(pair, Kind.LEASED, tuple(leases.LeaseReply(8, {}, [])))[1]
    assert not_now.grants == []
    back = leases.LeaseReturn(b"lease")
    assert round_trip(pair, Kind.LEASE_RETURN, tuple(back))[1] == back
    revoked = leases.LeaseRevoked(b"lease", "node n drains", False)
    assert round_trip(pair, Kind.LEASE_REVOKED, tuple(revoked))[1] == revoked


@pytest.mark.parametrize("kind, header", [
    (Kind.LEASE, (1, "driver", "not a shape", 1)),
    (Kind.LEASE, (1, "driver", {"CPU": 1.0}, "many")),
    (Kind.LEASED, (1, {}, "not a list")),
    (Kind.LEASED, (1, {}, [("too", "short")])),
    (Kind.LEASE_RETURN, None),
    (Kind.LEASE_REVOKED, (b"lease",)),
])
def test_malformed_lease_headers_are_refused(pair, kind, header):  # noqa: F811
    with pytest.raises(MalformedMessageError):
        round_trip(pair, kind, header)


def test_leases_are_off_unless_switched_on(monkeypatch):
    monkeypatch.delenv(leases.ENV_SWITCH, raising=False)
    assert not leases.enabled()
    monkeypatch.setenv(leases.ENV_SWITCH, "1")
    assert leases.enabled()
    monkeypatch.setenv(leases.ENV_SWITCH, "0")
    assert not leases.enabled()
