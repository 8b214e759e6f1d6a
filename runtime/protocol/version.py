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

    @property
    def wire_detail(self) -> dict:
        """Sent with a refusal (rpc.RemoteFailure), so the refused peer can name the
        version the refusing one speaks."""
        return {"ours": self.ours, "theirs": self.theirs}


MISSING_VERSION = 1   # a peer that sends no protocol_version predates the field


def check(theirs, peer: str) -> None:
    """Raise ProtocolVersionError unless `theirs` is this process's version."""
    if theirs != PROTOCOL_VERSION:
        raise ProtocolVersionError(PROTOCOL_VERSION, theirs, peer)
