"""The cluster YAML's reading limits (launcher.config.limits): a YAML bomb, a huge file
and /dev/zero are refused by `corral validate` with exit 2 and a message naming the cap,
in a process whose address space is capped (so a bomb that got through would fail with
MemoryError or be killed, not pass), while real files, anchors and merges included, and a
file just under the size cap still load."""
from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.config.load import load_config, load_config_text
from launcher.config.limits import (MAX_ALIAS_NODES, MAX_CONFIG_BYTES, MAX_NESTING,
                                    structure_problem)
from launcher.errors import ConfigErrors

CHECKOUT = Path(__file__).resolve().parents[2]
MEMORY_CAP_BYTES = 1 << 30  # the validating process's address space
HEADER = "cluster_name: bombs\nprovider: {type: process}\n"


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP_BYTES, MEMORY_CAP_BYTES))


def validate(path: str) -> subprocess.CompletedProcess:
    """`corral validate PATH` with the address space capped at 1 GiB; the timeout only
    bounds a run that would otherwise never end (the unlimited reader did not finish a
    billion laughs in 60 s)."""
    return subprocess.run([sys.executable, "-m", "launcher", "validate", path],
                          capture_output=True, text=True, timeout=60, cwd=CHECKOUT,
                          stdin=subprocess.DEVNULL, preexec_fn=_limit_memory)


def billion_laughs(levels: int = 9) -> str:
    lines = ['x-lol0: &lol0 "lol"']
    for level in range(1, levels + 1):
        items = ", ".join([f"*lol{level - 1}"] * 10)
        lines.append(f"x-lol{level}: &lol{level} [{items}]")
    return HEADER + "\n".join(lines) + f"\nsetup_commands: *lol{levels}\n"


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "MemoryError" not in output, output
    for needle in needles:
        assert needle in output, output


@pytest.mark.timeout(90)
def test_billion_laughs_is_refused_at_the_alias_that_crosses_the_cap(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs())
    result = validate(str(path))
    # lol3 is the first level whose ten aliases add more than 10000 nodes (10 x 1111)
    assert_refused(result, f"{path}:7:", f"more than {MAX_ALIAS_NODES} nodes", "*lol3")


@pytest.mark.timeout(90)
def test_a_huge_file_is_refused_by_its_size_without_being_read_whole(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "w") as handle:  # valid YAML all the way: only its size is wrong
        handle.write(HEADER + "setup_commands:\n")
        line = "  - echo " + "x" * 70 + "\n"
        handle.write(line * (64 * MAX_CONFIG_BYTES // len(line)))
    assert path.stat().st_size > 60 * MAX_CONFIG_BYTES
    result = validate(str(path))
    assert_refused(result, f"{path}: the file is larger than 1 MiB")


@pytest.mark.timeout(90)
def test_dev_zero_is_refused_by_its_size():
    assert_refused(validate("/dev/zero"), "/dev/zero: the file is larger than 1 MiB")


@pytest.mark.timeout(90)
def test_deep_nesting_is_refused_instead_of_crashing_the_yaml_composer(tmp_path):
    # 100000 levels (200 KB, well under the size cap) crash libyaml's composer with
    # SIGSEGV: the depth is refused before composing.
    path = tmp_path / "deep.yaml"
    path.write_text(HEADER + "x-deep: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert_refused(validate(str(path)), f"{path}:3:", f"nest more than {MAX_NESTING} deep")


@pytest.mark.timeout(90)
def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(HEADER + "x-loop: &me\n  inner: [1, *me]\n")
    assert_refused(validate(str(path)), f"{path}:4:", "the alias *me is inside the node &me")


def test_anchors_and_merges_of_a_real_config_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(HEADER + """\
x-common: &common
  resources: {CPU: 2}
  min_workers: 0
  max_workers: 4
available_node_types:
  head: {<<: *common, max_workers: 0}
  cpu2: *common
  cpu2b: {<<: *common, resources: {CPU: 2, special: 1}}
head_node_type: head
max_workers: 8
""")
    config = load_config(path)
    assert config.available_node_types["cpu2"].max_workers == 4
    assert dict(config.available_node_types["cpu2b"].resources) == {"CPU": 2, "special": 1}


def test_a_file_just_under_the_size_cap_loads(tmp_path):
    path = tmp_path / "long.yaml"
    line = "  - echo " + "y" * 70 + "\n"
    body = HEADER + "setup_commands:\n"
    count = (MAX_CONFIG_BYTES - len(body)) // len(line)
    path.write_text(body + line * count)
    assert MAX_CONFIG_BYTES - len(line) < path.stat().st_size <= MAX_CONFIG_BYTES
    assert len(load_config(path).setup_commands) == count


def test_text_over_the_cap_is_refused_too():
    text = HEADER + "setup_commands: [" + ", ".join(["echo"] * (MAX_CONFIG_BYTES // 6)) + "]\n"
    with pytest.raises(ConfigErrors) as raised:
        load_config_text(text, source="<big>")
    assert "larger than 1 MiB" in str(raised.value)


def test_aliases_up_to_the_cap_are_accepted_and_one_alias_more_is_not():
    # an anchored list of 99 scalars is 100 nodes; each alias of it adds 100
    anchored = "[" + ", ".join(["1"] * 99) + "]"
    aliases = MAX_ALIAS_NODES // 100
    at_cap = "a: &a " + anchored + "\nb: [" + ", ".join(["*a"] * aliases) + "]\n"
    assert structure_problem(at_cap, "<at cap>") is None
    over = at_cap.replace("\nb: [", "\nb: [*a, ")
    problem = structure_problem(over, "<over>")
    assert problem is not None and problem.line == 2, problem


@pytest.mark.timeout(90)
def test_a_pipe_that_never_ends_is_refused_by_its_size(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    feeder = subprocess.Popen(["sh", "-c", 'exec cat /dev/zero > "$0"', str(fifo)],
                              stderr=subprocess.DEVNULL)
    try:
        assert_refused(validate(str(fifo)), f"{fifo}: the file is larger than 1 MiB")
    finally:
        feeder.kill()
        feeder.wait()
