"""A full disk on the head never stops the autoscaler monitor and never leaves half an
event in its log. A real tmpfs of a few MiB is the disk (root only: mounted on the test's
own directory, unmounted afterwards), filled up with a file and freed again:

- the event log, status file and state file on it directly (autoscaler.events,
  autoscaler.tracker): writes are refused without an exception, events wait in memory
  and go out in order once space returns, a short write is taken back, the status and
  state files keep their last whole content;
- a process-provider cluster whose CORRAL_HOME (every node directory, the head's
  session/ with the monitor's files) is on it: the monitor process keeps running while
  work asks for workers the full disk cannot record, and writes again when space returns.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoscaler.decisions import Plan
from autoscaler.events import EventLog, append_whole, read_events
from autoscaler.tracker import MonitorState
from launcher.errors import CapacityError
from tests.helpers import alive, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting a small tmpfs as the head's disk needs root")


class SmallDisk:
    """A tmpfs of `size_bytes` mounted on `path`; fill() takes every free byte (in a
    filler file), free() gives it back."""

    def __init__(self, path: Path, size_bytes: int):
        self.path = path
        self.filler = path / "filler"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o",
                                 f"size={size_bytes},mode=0700", "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")

    def fill(self) -> int:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk_bytes in (1 << 16, 1 << 12, 1 << 9, 1 << 6, 1):
                while True:
                    try:
                        if os.write(fd, b"\0" * chunk_bytes) < chunk_bytes:
                            break
                    except OSError as error:
                        assert error.errno == errno.ENOSPC, error
                        break
        finally:
            os.close(fd)
        return self.filler.stat().st_size

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    disks: list[SmallDisk] = []

    def mount(path: Path, size_bytes: int) -> SmallDisk:
        path.mkdir(exist_ok=True)
        disk = SmallDisk(path, size_bytes)
        disks.append(disk)
        return disk
    try:
        yield mount
    finally:
        for disk in reversed(disks):
            disk.unmount()


def strict_lines(path: Path) -> list[dict]:
    """Every line of the file must be a whole JSON event, the last one ended by its
    newline: what the log holds at any moment, not just what a reader would keep."""
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"torn last line: {raw[-200:]!r}"
    return [json.loads(line) for line in raw.decode("utf-8").splitlines()]


@pytest.mark.timeout(60)
def test_event_log_on_a_full_disk_waits_and_writes_everything_in_order(tmp_path,
                                                                        small_disk):
    disk = small_disk(tmp_path / "disk", 1 << 20)
    events = EventLog(disk.path / "session" / "autoscaler.events")
    for number in range(5):
        events.write(number, "before", f"event {number}")
    assert disk.fill() > 0
    for number in range(200):  # several pages' worth: some fit the last page, then none
        events.write(100 + number, "during", f"event {number} " + "m" * 300)
    assert events.pending_count > 0 and events.last_error is not None
    assert "No space left on device" in events.last_error
    written_while_full = strict_lines(events.path)  # whole lines only, even now
    assert [event["kind"] for event in written_while_full[:5]] == ["before"] * 5
    disk.free()
    events.write(999, "after", "space is back")
    assert events.pending_count == 0 and events.last_error is None
    lines = strict_lines(events.path)
    assert [event["message"] for event in lines] == \
        [f"event {n}" for n in range(5)] + \
        [f"event {n} " + "m" * 300 for n in range(200)] + ["space is back"]
    assert read_events(events.path) == lines


@pytest.mark.timeout(60)
def test_a_short_write_is_taken_back_whole(tmp_path, small_disk):
    disk = small_disk(tmp_path / "disk", 1 << 20)
    log_path = disk.path / "log"
    append_whole(log_path, b'{"n": 1}\n')
    disk.fill()  # the log's page still has room for a few KiB, not for 64 KiB
    line = json.dumps({"n": 2, "pad": "p" * (1 << 16)}).encode() + b"\n"
    with pytest.raises(OSError) as raised:
        append_whole(log_path, line)
    assert raised.value.errno == errno.ENOSPC
    assert log_path.read_bytes() == b'{"n": 1}\n'
    disk.free()
    append_whole(log_path, line)
    assert [event["n"] for event in strict_lines(log_path)] == [1, 2]


@pytest.mark.timeout(60)
def test_a_torn_line_left_by_a_dead_writer_is_skipped_and_spoils_nothing(tmp_path):
    log_path = tmp_path / "autoscaler.events"
    log_path.write_bytes(b'{"kind": "one", "message": "whole"}\n{"kind": "tw')
    events = EventLog(log_path)
    events.write(1.0, "three", "after the tear")
    assert [event["kind"] for event in read_events(log_path)] == ["one", "three"]


@pytest.mark.timeout(60)
def test_status_and_state_files_keep_their_last_whole_content(tmp_path, small_disk):
    disk = small_disk(tmp_path / "disk", 1 << 20)
    events = EventLog(disk.path / "autoscaler.events")
    state = MonitorState(path=disk.path / "autoscaler.state.json", config_token="t")
    plan = _plan({"cpu": 1})
    assert events.write_status(1.0, plan) and state.save()
    status_before = events.status_file.read_bytes()
    state_before = state.path.read_bytes()
    disk.fill()
    big_plan = _plan({f"type{n}-" + "x" * 200: n for n in range(1, 200)})
    assert events.write_status(2.0, big_plan) is False
    state.launch_failed("cpu", CapacityError("no capacity " + "c" * 8000), 2.0)
    assert state.unsaved
    assert events.status_file.read_bytes() == status_before
    assert state.path.read_bytes() == state_before
    assert sorted(path.name for path in disk.path.iterdir()) == \
        ["autoscaler.state.json", "autoscaler.status.json", "filler"]  # no temp file left
    disk.free()
    assert state.save() and not state.unsaved
    assert MonitorState.load(state.path, "t").backoffs["cpu"].reason.startswith(
        "CapacityError")
    assert events.write_status(3.0, big_plan)


def _plan(to_launch: dict[str, int]) -> Plan:
    return Plan(to_launch=to_launch, target_launch=to_launch, to_terminate=(),
                infeasible=(), unplaced=(), reasons=())


JOB = """
import runtime
runtime.init(address="auto")

@runtime.remote(num_cpus=1)
def work(i):
    return i

print(runtime.get([work.remote(i) for i in range(2)], timeout=300))
"""


def corral(*args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(170)
def test_the_monitor_outlives_a_full_head_disk_and_writes_again_after(tmp_path, corral_home,
                                                                       small_disk):
    disk = small_disk(corral_home, 2 << 20)  # everything of the cluster lives on it
    name = f"full{os.getpid() % 10000}"
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({
        "cluster_name": name, "max_workers": 2, "provider": {"type": "process"},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "min_workers": 0, "max_workers": 0},
            "cpu1": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 2}},
        "head_node_type": "head"}))
    job = None
    try:
        up = corral("up", "-y", str(config))
        assert up.returncode == 0, up.stdout + up.stderr
        [head] = [path for path in (corral_home / "clusters" / name / "nodes").iterdir()
                  if "-head-" in path.name]
        session = head / "session"
        events_path = session / "autoscaler.events"
        monitor_pid = wait_for(lambda: _pid(session / "monitor.pid"), 30, "the monitor")
        wait_for(lambda: events_path.exists() and any(
            event["kind"] == "started" for event in strict_lines(events_path)), 30,
            "the monitor's first event")
        disk.fill()
        _fill_the_last_page(events_path)
        script = tmp_path / "job.py"
        script.write_text(JOB)
        job = subprocess.Popen([sys.executable, "-m", "launcher", "exec", str(config),
                                f"{sys.executable} {script}"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        # The work asks for 2 CPUs the head has not: the monitor plans a launch, which
        # the full disk refuses (no node record can be written), and so are its events.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert alive(monitor_pid), "the monitor died of the full disk"
            strict_lines(events_path)
            time.sleep(0.5)
        assert alive(monitor_pid)
        disk.free()
        freed_s = time.time()
        seen = wait_for(lambda: [event for event in strict_lines(events_path)
                                 if event["kind"] in ("launch-failed", "launched")], 60,
                        "events written after space returned",
                        describe=lambda: events_path.read_text())
        assert alive(monitor_pid) and _pid(session / "monitor.pid") == monitor_pid
        failed = [event for event in seen if event["kind"] == "launch-failed"]
        assert failed and "No space left on device" in failed[0]["message"], seen
        monitor_log = session / "logs" / "monitor.log"
        wait_for(lambda: monitor_log.exists() and "is written again" in
                 monitor_log.read_text(errors="replace"), 30,
                 "the monitor's note that waiting events were written")
        wait_for(lambda: json.loads((session / "autoscaler.status.json").read_text())
                 ["at_s"] >= freed_s, 30, "the status file written again")
        assert read_events(events_path) == strict_lines(events_path)
        assert alive(monitor_pid)
    finally:
        if job is not None:
            job.kill()
            job.communicate()
        if disk.filler.exists():
            disk.free()
        down = corral("down", "-y", str(config))
        assert down.returncode == 0, down.stdout + down.stderr


def _fill_the_last_page(events_path: Path) -> None:
    """A full tmpfs still takes bytes into a file's last, partly used page: use that
    room up with whole padding events (as another writer would), so that the monitor's
    next event finds no room at all."""
    for pad_bytes in (1024, 256, 64, 16, 0):
        line = json.dumps({"kind": "padding", "message": "p" * pad_bytes}).encode() + b"\n"
        while True:
            try:
                append_whole(events_path, line)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break


def _pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None
