"""The local provider's per-host tag file: read, claim by compare-and-swap, release.
Runs the real shell scripts through a LocalRunner against a temporary state dir."""
from __future__ import annotations

import json
import os
import threading

import pytest

from launcher.bootstrap.command_runner import LocalRunner
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


def claimed(state, cluster="c1"):
    runner, state_dir = state
    assert host_tags.claim(runner, state_dir, claim_for(cluster)) is None
    return runner, state_dir


def test_claim_takes_a_free_host_once(state):
    runner, state_dir = claimed(state, "c1")
    taken = host_tags.claim(runner, state_dir, claim_for("c2"))
    assert taken is not None and taken.belongs_to("c1")
    assert host_tags.read(runner, state_dir).belongs_to("c1")


def test_claim_replaces_a_terminated_or_garbage_claim(state):
    runner, state_dir = state
    os.makedirs(state_dir, mode=0o700)
    path = os.path.join(state_dir, host_tags.TAGS_FILE)
    for leftover in (host_tags.encode({**claim_for("old"), "state": "terminated"}), "{junk"):
        with open(path, "w") as file:
            file.write(leftover)
        assert host_tags.claim(runner, state_dir, claim_for("c2")) is None
        assert host_tags.read(runner, state_dir).belongs_to("c2")
        os.remove(path)


def test_racing_one_command_claims_have_one_winner(state):
    runner, state_dir = state
    winners = []

    def grab(cluster):
        if host_tags.claim(runner, state_dir, claim_for(cluster)) is None:
            winners.append(cluster)
    threads = [threading.Thread(target=grab, args=(f"c{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert host_tags.read(runner, state_dir).belongs_to(winners[0])


def test_update_merges_tags_on_the_host(state):
    runner, state_dir = claimed(state)
    tricky = "it's \"x\" $HOME `id` \\n %s"
    assert host_tags.update_claim(runner, state_dir, "c1", {"b": "2", "q": tricky}) is not None
    assert host_tags.update_claim(runner, state_dir, "c1", {"a": "3"}) is not None
    tags = host_tags.read(runner, state_dir)
    assert tags.claim["tags"] == {"a": "3", "b": "2", "q": tricky}
    assert tags.belongs_to("c1") and tags.claim["claimed_by"] == "test"
    path = os.path.join(state_dir, host_tags.TAGS_FILE)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert sorted(os.listdir(state_dir)) == [".lock", host_tags.TAGS_FILE]  # no temp left


def test_update_refuses_a_host_that_is_not_the_clusters(state):
    runner, state_dir = state
    assert host_tags.update_claim(runner, state_dir, "c1", {"a": "1"}) is None  # free
    claimed(state, "c2")
    assert host_tags.update_claim(runner, state_dir, "c1", {"a": "1"}) is None
    assert host_tags.update_claim(runner, state_dir, "c1", None) is None
    assert host_tags.read(runner, state_dir).claim["tags"] == {"a": "1"}  # c2's, untouched
    assert host_tags.read(runner, state_dir).belongs_to("c2")


def test_release_frees_the_host(state):
    runner, state_dir = claimed(state)
    assert host_tags.update_claim(runner, state_dir, "c1", None) is not None
    assert host_tags.read(runner, state_dir).is_free()
    assert host_tags.update_claim(runner, state_dir, "c1", None) is None  # already free


def test_racing_merges_lose_no_tag(state):
    runner, state_dir = claimed(state)
    known = host_tags.read(runner, state_dir)  # all but the first write find it stale

    def write(index):
        assert host_tags.update_claim(runner, state_dir, "c1", {f"k{index}": str(index)},
                                      known=known)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert host_tags.read(runner, state_dir).claim["tags"] == \
        {"a": "1", **{f"k{i}": str(i) for i in range(6)}}


@pytest.fixture
def without_python(tmp_path):
    """A LocalRunner whose PATH has the shell tools the scripts use, but no python3."""
    import shutil
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "mkdir", "mv", "rm", "flock", "printf"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    return LocalRunner(workdir=str(tmp_path), env={"PATH": str(bin_dir)})


def test_update_without_python_on_the_host_falls_back_to_swap(state, without_python):
    _, state_dir = claimed(state)
    assert host_tags.update_claim(without_python, state_dir, "c1", {"b": "2"}) is not None
    assert host_tags.read(without_python, state_dir).claim["tags"] == {"a": "1", "b": "2"}
    assert host_tags.update_claim(without_python, state_dir, "c2", {"b": "3"}) is None
    assert host_tags.update_claim(without_python, state_dir, "c1", None) is not None
    assert host_tags.read(without_python, state_dir).is_free()


def test_update_fast_path_uses_what_the_caller_knows_and_survives_a_stale_copy(state):
    runner, state_dir = claimed(state)
    known = host_tags.read(runner, state_dir)
    first = host_tags.update_claim(runner, state_dir, "c1", {"b": "2"}, known=known)
    assert first == host_tags.read(runner, state_dir)  # returns what the file now holds
    assert first.claim["tags"] == {"a": "1", "b": "2"}
    # `known` is stale now: the host merges instead, losing nothing
    second = host_tags.update_claim(runner, state_dir, "c1", {"c": "3"}, known=known)
    assert second == host_tags.read(runner, state_dir)
    assert second.claim["tags"] == {"a": "1", "b": "2", "c": "3"}
    # a copy that says the host is ours, when it is not any more: refused on the host
    host_tags.update_claim(runner, state_dir, "c1", None, known=second)
    host_tags.claim(runner, state_dir, claim_for("c2"))
    assert host_tags.update_claim(runner, state_dir, "c1", {"x": "y"}, known=second) is None
    assert host_tags.read(runner, state_dir).belongs_to("c2")


def test_fast_path_needs_no_python_on_the_host(state, without_python):
    _, state_dir = claimed(state)
    known = host_tags.read(without_python, state_dir)
    new = host_tags.update_claim(without_python, state_dir, "c1", {"b": "2"}, known=known)
    assert new == host_tags.read(without_python, state_dir)
    assert new.claim["tags"] == {"a": "1", "b": "2"}
