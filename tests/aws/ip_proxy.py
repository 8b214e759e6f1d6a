"""An SSH ProxyCommand for the AWS end-to-end test: `ip_proxy.py MAP_FILE HOST PORT`.

moto gives instances made-up IP addresses. This maps each instance IP it is asked for to
one of the SSH test hosts (the first time: the next free one, remembered in MAP_FILE under
a lock), connects to that host's port and relays bytes between the connection and its
stdin/stdout, as `ssh -W` would. MAP_FILE is JSON: {"hosts": [ip, ...], "assigned": {}}.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading


def target_for(map_path: str, instance_ip: str) -> str:
    with open(map_path, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        mapping = json.load(handle)
        assigned = mapping.setdefault("assigned", {})
        if instance_ip not in assigned:
            free = [host for host in mapping["hosts"] if host not in assigned.values()]
            if not free:
                raise SystemExit(f"ip_proxy: no test host left for {instance_ip}")
            assigned[instance_ip] = free[0]
            handle.seek(0)
            handle.truncate()
            json.dump(mapping, handle)
        return assigned[instance_ip]


def relay(connection: socket.socket) -> None:
    def upstream():
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
    threading.Thread(target=upstream, daemon=True).start()
    while True:
        data = connection.recv(65536)
        if not data:
            break
        os.write(1, data)


def main(argv: list[str]) -> int:
    map_path, instance_ip, port = argv
    host = target_for(map_path, instance_ip)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.settimeout(None)
        relay(connection)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
