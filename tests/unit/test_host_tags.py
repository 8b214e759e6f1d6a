"""The local provider's per-host tag file: read, claim by compare-and-swap, release.
Runs the real shell scripts through a LocalRunner against a temporary state dir."""
from __future__ import annotations

import json
import os
import threading

import pytest

from launcher.command_runner import LocalRunner
from launcher.providers import host_tags

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def state(tmp_path):
    runner = LocalRunner(workdir=str(tmp_path))
    return runner, str(tmp_path / "state")


def claim_for(cluster):
    return host_tags.make_claim(cluster, "worker", "cpu", {"a": "1"}, claimed_by="test")


def test_missing_file_is_free(state):
    runner, state_dir = state
    tags = host_tags.read(runner, state_dir)
    assert tags.is_free() and tags.raw == "" and tags.claim is None


def test_claim_then_read_back(state):
    runner, state_dir = state
    assert host_tags.compare_and_swap(runner, state_dir, host_tags.read(runner, state_dir),
                                      claim_for("c1")) is None
    tags = host_tags.read(runner, state_dir)
    assert tags.belongs_to("c1") and not tags.belongs_to("c2") and not tags.is_free()
    assert tags.claim["tags"] == {"a": "1"}
    path = os.path.join(state_dir, host_tags.TAGS_FILE)
    assert json.load(open(path))["cluster_name"] == "c1"
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_stale_expectation_is_a_conflict(state):
    runner, state_dir = state
    empty = host_tags.read(runner, state_dir)
    assert host_tags.compare_and_swap(runner, state_dir, empty, claim_for("c1")) is None
    conflict = host_tags.compare_and_swap(runner, state_dir, empty, claim_for("c2"))
    assert conflict is not None and conflict.belongs_to("c1")
    assert host_tags.read(runner, state_dir).belongs_to("c1")


def test_delete_frees_the_host(state):
    runner, state_dir = state
    host_tags.compare_and_swap(runner, state_dir, host_tags.read(runner, state_dir),
                               claim_for("c1"))
    assert host_tags.compare_and_swap(runner, state_dir, host_tags.read(runner, state_dir),
                                      None) is None
    assert host_tags.read(runner, state_dir).is_free()


def test_terminated_or_garbage_files_are_free():
    terminated = host_tags.parse(host_tags.encode({**claim_for("c1"), "state": "terminated"}))
    assert terminated.is_free() and not terminated.belongs_to("c1")
    assert host_tags.parse("{not json").is_free()
    assert host_tags.parse("[1, 2]").is_free()
    assert host_tags.parse(host_tags.encode({"state": "running"})).is_free()


def test_tricky_tag_values_survive_the_shell(state):
    runner, state_dir = state
    claim = host_tags.make_claim("c1", "worker", "cpu",
                                 {"quote": "it's \"x\" $HOME `id` \\n %s"}, "test")
    host_tags.compare_and_swap(runner, state_dir, host_tags.read(runner, state_dir), claim)
    assert host_tags.read(runner, state_dir).claim["tags"] == claim["tags"]


def test_racing_claims_have_one_winner(state):
    runner, state_dir = state
    empty = host_tags.read(runner, state_dir)
    winners = []

    def claim(cluster):
        if host_tags.compare_and_swap(runner, state_dir, empty, claim_for(cluster)) is None:
            winners.append(cluster)
    threads = [threading.Thread(target=claim, args=(f"c{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert host_tags.read(runner, state_dir).belongs_to(winners[0])


def test_a_planted_state_dir_is_refused(state, tmp_path):
    runner, state_dir = state
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / host_tags.TAGS_FILE).write_text(host_tags.encode(claim_for("c1")))
    os.symlink(target, state_dir)
    tags = host_tags.read(runner, state_dir)
    assert tags.is_free() and tags.raw == ""  # a symlinked dir is not read
    from launcher.errors import CommandError
    with pytest.raises(CommandError, match="not a directory owned by us"):
        host_tags.compare_and_swap(runner, state_dir, tags, claim_for("c2"))
    assert json.loads((target / host_tags.TAGS_FILE).read_text())["cluster_name"] == "c1"


def test_malformed_claims_read_safely():
    odd = host_tags.parse(json.dumps({"cluster_name": "c1", "state": "running",
                                      "tags": ["not", "a", "dict"]}))
    assert odd.belongs_to("c1") and odd.tags == {}
    assert host_tags.parse(json.dumps({"cluster_name": 7})).is_free()
    numbers = host_tags.parse(json.dumps({"cluster_name": "c1", "tags": {"n": 1}}))
    assert numbers.tags == {"n": "1"}
