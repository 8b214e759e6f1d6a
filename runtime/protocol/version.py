"""The protocol's version: a driver or node agent says which it speaks when it registers
with the control service, which refuses another (ProtocolVersionError names both).

Raise PROTOCOL_VERSION with any change a peer of the previous version would misread: a
new required field, a field's meaning, a kind's header. A new optional rpc method does
not need it (an old control service answers UnknownMethodError)."""
from __future__ import annotations

from runtime.errors import RuntimeSystemError

PROTOCOL_VERSION = 2


class ProtocolVersionError(RuntimeSystemError):
    """A peer speaks another protocol version than this process."""

    def __init__(self, ours: int, theirs, peer: str):
        super().__init__(f"{peer} speaks corral protocol version {theirs!r}, this process "
                         f"speaks version {ours}: run the same corral version on every "
                         f"node and driver (corral --version; `corral up` ships it)")
        self.ours = ours
        self.theirs = theirs
        self.peer = peer


def check(theirs, peer: str) -> None:
    """Raise ProtocolVersionError unless `theirs` is this process's version."""
    if theirs != PROTOCOL_VERSION:
        raise ProtocolVersionError(PROTOCOL_VERSION, theirs, peer)
