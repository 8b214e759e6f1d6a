"""An SSH ProxyCommand for end-to-end tests: `ip_proxy.py MAP_JSON HOST PORT` connects to
the test host that MAP_JSON maps HOST (an instance's external IP in the fake GCE) to, and
relays bytes between stdin/stdout and that connection. Only loopback and the test-host
network 198.18.0.0/24 are ever dialled."""
from __future__ import annotations

import ipaddress
import json
import os
import select
import socket
import sys

ALLOWED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/24"))


def relay(connection: socket.socket) -> None:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    open_inputs = [stdin, connection]
    while open_inputs:
        readable, _, _ = select.select(open_inputs, [], [])
        for source in readable:
            if source is connection:
                data = connection.recv(65536)
                if not data:
                    return
                os.write(stdout, data)
            else:
                data = os.read(stdin, 65536)
                if not data:
                    connection.shutdown(socket.SHUT_WR)
                    open_inputs.remove(stdin)
                else:
                    connection.sendall(data)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        sys.stderr.write("usage: ip_proxy.py MAP_JSON HOST PORT\n")
        return 2
    with open(argv[1]) as handle:
        mapping = json.load(handle)
    target = mapping.get(argv[2])
    if target is None or not any(ipaddress.ip_address(target) in net for net in ALLOWED):
        sys.stderr.write(f"ip_proxy: no test host for {argv[2]}\n")
        return 2
    with socket.create_connection((target, int(argv[3])), timeout=10) as connection:
        connection.settimeout(None)
        relay(connection)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
