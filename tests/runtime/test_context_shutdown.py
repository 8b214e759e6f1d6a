"""Closing a ZeroMQ context that serves CurveZMQ never aborts the process.

A server socket's context has a ZAP handler thread blocked in recv on its own socket;
`ctx.destroy()` closed that socket from the closing thread, and libzmq then aborted
("Assertion failed: pfd.revents & POLLIN"), seen as node agents dying with SIGABRT on a
plain SIGTERM. protocol.destroy_context ends the handler from its own thread first.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]

LOOP = textwrap.dedent("""
    import os, sys, tempfile, zmq
    from runtime.node import keys
    from runtime.protocol import frames as protocol
    directory = tempfile.mkdtemp(dir=sys.argv[1])
    cluster_keys = keys.create_cluster_keys(directory)
    for _ in range(int(sys.argv[2])):
        ctx = zmq.Context()
        protocol.bind_router(ctx, "tcp://127.0.0.1:0", cluster_keys)
        protocol.destroy_context(ctx)
    print("closed", sys.argv[2])
""")


@pytest.mark.timeout(120)
def test_destroying_contexts_with_a_zap_handler_never_aborts(tmp_path):
    rounds = 300  # the old ctx.destroy() aborted within a few dozen rounds here
    result = subprocess.run([sys.executable, "-c", LOOP, str(tmp_path), str(rounds)],
                            cwd=CHECKOUT, capture_output=True, text=True, timeout=100,
                            env={"PYTHONPATH": str(CHECKOUT), "PATH": "/usr/bin:/bin"})
    assert "Assertion failed" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"closed {rounds}"
