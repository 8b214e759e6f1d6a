"""LocalRunner and run_on_many: undecodable output, process-group kills on timeout and
cancel, line streaming, signals, per-node environments."""
from __future__ import annotations

import os
import threading

import pytest

from launcher.bootstrap.command_runner import (INTERRUPTED_EXIT_CODE, LineDecoder, LocalRunner,
                                     run_on_many)
from tests.helpers import alive, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def runner(tmp_path):
    return LocalRunner(str(tmp_path / "node"), env={"BASE": "b"}, host="n1")


@pytest.fixture
def reap():
    """PIDs a test's commands left behind are killed at the end, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_undecodable_output_is_replaced_not_a_crash(runner, tmp_path):
    log = tmp_path / "node.log"
    result = runner.run(r'printf "caf\xe9 \xff\n"; printf "\xfe" >&2', log_path=str(log))
    assert result.ok
    assert result.stdout == "caf\ufffd \ufffd\n" and result.stderr == "\ufffd"
    assert "caf\ufffd" in log.read_text()


def test_line_decoder_keeps_multibyte_characters_split_across_chunks():
    lines = []
    decoder = LineDecoder(lines.append)
    encoded = "héllo\nwörld".encode()
    for index in range(len(encoded)):
        decoder.feed(encoded[index:index + 1])
    decoder.feed(b"", final=True)
    assert lines == ["héllo", "wörld"] and decoder.text() == "héllo\nwörld"


def test_output_streams_line_by_line_while_the_command_runs(runner):
    seen: list[tuple[str, str]] = []
    first_line = threading.Event()
    release = runner.workdir + "/release"

    def on_output(stream, line):
        seen.append((stream, line))
        first_line.set()

    def let_it_finish():
        first_line.wait(20)
        os.makedirs(runner.workdir, exist_ok=True)
        open(release, "w").close()
    helper = threading.Thread(target=let_it_finish)
    helper.start()
    # The command waits for a file that is only written once its first line was seen.
    result = runner.run(f'echo one; echo two >&2; while [ ! -e {release} ]; do sleep 0.05; '
                        f'done; printf "last"', on_output=on_output, timeout_s=30)
    helper.join()
    assert result.ok and result.stdout == "one\nlast" and result.stderr == "two\n"
    assert sorted(seen) == [("stderr", "two"), ("stdout", "last"), ("stdout", "one")]


def test_timeout_kills_the_whole_process_group(runner, reap):
    result = runner.run("sleep 300 & echo $! > child.pid; echo started; wait", timeout_s=1)
    child = int(open(os.path.join(runner.workdir, "child.pid")).read())
    reap.append(child)
    assert result.exit_code == 124 and "started" in result.stdout
    assert "timed out after 1 s" in result.stderr
    assert wait_for(lambda: not alive(child), 10, "the command's child to end with it")


def test_cancel_stops_the_command_and_its_children(runner, reap):
    cancel = threading.Event()
    pid_file = os.path.join(runner.workdir, "child.pid")

    def cancel_once_started():
        try:
            wait_for(lambda: os.path.exists(pid_file) and os.path.getsize(pid_file) > 0, 20,
                     "the command's child to start")
        finally:
            cancel.set()
    helper = threading.Thread(target=cancel_once_started)
    helper.start()
    result = runner.run("sleep 300 & echo $! > child.pid.tmp; mv child.pid.tmp child.pid; "
                        "wait", cancel=cancel)
    helper.join()
    child = int(open(pid_file).read())
    reap.append(child)
    assert result.exit_code == INTERRUPTED_EXIT_CODE and "interrupted" in result.stderr
    assert wait_for(lambda: not alive(child), 10, "the cancelled command's child to end")


def test_a_signal_is_named_and_gives_128_plus_n(runner):
    result = runner.run("kill -TERM $$")
    assert result.exit_code == 143 and result.signal_name == "SIGTERM"
    assert "killed by signal SIGTERM" in result.stderr
    assert runner.run("exit 143").signal_name is None  # an exit code is not a signal


def test_run_on_many_gives_each_node_its_env_and_streams_with_the_node_key(tmp_path):
    runners = {name: LocalRunner(str(tmp_path / name), host=name) for name in ("a", "b")}
    lines: list[tuple[str, str, str]] = []
    lock = threading.Lock()

    def on_output(key, stream, line):
        with lock:
            lines.append((key, stream, line))
    results = run_on_many(runners, 'echo "$COMMON $OWN"', env={"COMMON": "c"},
                          envs={"a": {"OWN": "1"}, "b": {"OWN": "2"}}, on_output=on_output)
    assert {key: result.stdout for key, result in results.items()} == {"a": "c 1\n",
                                                                       "b": "c 2\n"}
    assert sorted(lines) == [("a", "stdout", "c 1"), ("b", "stdout", "c 2")]
    assert run_on_many({}, "true") == {}
