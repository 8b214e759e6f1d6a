"""launcher.ssh.file_sync on this machine: exclude patterns, skip-unchanged, modes, file/dir forms."""
from __future__ import annotations

import os
import stat

import pytest

from launcher.errors import ClusterError
from launcher.ssh.file_sync import (SyncEntry, SyncSourceMissingError, _parse_state,
                                copy_tree_local, is_excluded, plan_local_source, remote_path,
                                sync_plan)
from tests.helpers import make_tree



def listing(root) -> dict[str, str]:
    return {str(path.relative_to(root)): path.read_text()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("rel, is_dir, patterns, expected", [
    ("a.pyc", False, ["*.pyc"], True),
    ("pkg/mod.pyc", False, ["*.pyc"], True),           # basename match at any depth
    ("pkg/mod.py", False, ["*.pyc"], False),
    (".git", True, [".git/"], True),
    (".git", False, [".git/"], False),                  # trailing / = directories only
    ("sub/.git", True, [".git/"], True),
    ("build", True, ["/build"], True),                  # leading / = anchored at the root
    ("src/build", True, ["/build"], False),
    ("src/build", True, ["build"], True),
    ("data/big.bin", False, ["data/*.bin"], True),
    ("other/big.bin", False, ["data/*.bin"], False),
    ("x", False, [], False),
])
def test_is_excluded(rel, is_dir, patterns, expected):
    assert is_excluded(rel, is_dir, patterns) is expected


def test_copy_tree_skips_unchanged_and_honours_excludes(tmp_path):
    src = make_tree(tmp_path / "src", {"a.txt": "a", "sub/b.txt": "b", "sub/c.pyc": "c",
                                       ".git/HEAD": "ref", "keep/.git": "file named .git"})
    dst = tmp_path / "dst"
    exclude = ["*.pyc", ".git/"]
    assert copy_tree_local(str(src), str(dst), exclude) == 3
    assert listing(dst) == {"a.txt": "a", "sub/b.txt": "b", "keep/.git": "file named .git"}
    assert copy_tree_local(str(src), str(dst), exclude) == 0  # nothing changed

    (src / "a.txt").write_text("A")          # same size, new content: the digest decides
    (src / "sub/new.txt").write_text("new")
    assert copy_tree_local(str(src), str(dst), exclude) == 2
    assert listing(dst)["a.txt"] == "A" and listing(dst)["sub/new.txt"] == "new"

    (dst / "extra.txt").write_text("mine")   # nothing at the destination is deleted
    assert copy_tree_local(str(src), str(dst), exclude) == 0
    assert (dst / "extra.txt").read_text() == "mine"
    assert not list(dst.rglob("*.corral-partial*"))


def test_modes_are_preserved_also_when_only_the_mode_changes(tmp_path):
    src = make_tree(tmp_path / "src", {"run.sh": "#!/bin/sh\n", "secret": "s"})
    os.chmod(src / "run.sh", 0o755)
    os.chmod(src / "secret", 0o600)
    dst = tmp_path / "dst"
    assert copy_tree_local(str(src), str(dst), []) == 2
    assert stat.S_IMODE((dst / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dst / "secret").stat().st_mode) == 0o600
    os.chmod(src / "run.sh", 0o700)
    assert copy_tree_local(str(src), str(dst), []) == 0      # no content copied...
    assert stat.S_IMODE((dst / "run.sh").stat().st_mode) == 0o700  # ...but the mode is


def test_single_file_to_a_path_or_into_a_directory(tmp_path):
    src = make_tree(tmp_path / "src", {"conf.yaml": "x: 1\n"})
    target = tmp_path / "out" / "renamed.yaml"
    assert copy_tree_local(str(src / "conf.yaml"), str(target), []) == 1
    assert target.read_text() == "x: 1\n"
    assert copy_tree_local(str(src / "conf.yaml"), str(target), []) == 0
    into = tmp_path / "into"
    assert copy_tree_local(str(src / "conf.yaml"), f"{into}/", []) == 1
    assert (into / "conf.yaml").read_text() == "x: 1\n"


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(SyncSourceMissingError, match="nope") as raised:
        copy_tree_local(str(tmp_path / "nope"), str(tmp_path / "dst"), [])
    assert isinstance(raised.value, ClusterError) and isinstance(raised.value, FileNotFoundError)
    assert raised.value.exit_code == 2


def test_plan_lists_dirs_and_prunes_excluded_subtrees(tmp_path):
    src = make_tree(tmp_path / "src", {"a/b/c.txt": "c", "node_modules/x/y.js": "y"})
    plan = plan_local_source(str(src), "/remote/dir/", ["node_modules/"])
    assert plan.root == "/remote/dir"
    assert plan.dirs == ["a", "a/b"]
    assert [entry.rel for entry in plan.files] == ["a/b/c.txt"]


def test_sync_plan_hashes_only_when_sizes_match():
    hashed = []

    def digest(entry):
        hashed.append(entry.rel)
        return "same" if entry.rel != "changed" else "new"

    files = [SyncEntry(rel, "/src/" + rel, size, 0o644) for rel, size in
             [("same", 4), ("changed", 4), ("resized", 9), ("new", 1), ("mode", 4)]]
    dest = {"same": (4, "same", 0o644), "changed": (4, "old", 0o644),
            "resized": (3, "x", 0o644), "mode": (4, "same", 0o600)}
    to_copy, to_chmod = sync_plan(files, dest, digest)
    assert [entry.rel for entry in to_copy] == ["changed", "resized", "new"]
    assert [entry.rel for entry in to_chmod] == ["mode"]
    assert sorted(hashed) == ["changed", "mode", "same"]


def test_remote_listing_parser_and_home_paths():
    output = (b"DIR\0a\0a/b\0HASHES\0" + b"f" * 64 + b"  a/b/with space.txt\0"
              + b"MODES\0" + b"644 12 a/b/with space.txt\0")
    header, state = _parse_state(output)
    assert header == ["DIR", "a", "a/b"]
    assert state == {"a/b/with space.txt": (12, "f" * 64, 0o644)}
    assert remote_path("~/x/y") == "x/y" and remote_path("~") == "."
    assert remote_path("/abs") == "/abs"


def test_symlinks_are_followed_without_looping(tmp_path):
    src = make_tree(tmp_path / "src", {"real/data.txt": "d"})
    (src / "real" / "loop").symlink_to(src)                 # a cycle back to the root
    (src / "alias.txt").symlink_to(src / "real" / "data.txt")
    dst = tmp_path / "dst"
    assert copy_tree_local(str(src), str(dst), []) == 2
    assert listing(dst) == {"alias.txt": "d", "real/data.txt": "d"}
    assert not (dst / "alias.txt").is_symlink()


def test_two_copies_into_one_place_at_once_both_succeed(tmp_path):
    # the `process` provider's nodes share this disk: `rsync-up --all-nodes` copies the
    # same files to the same paths at the same time
    import threading
    src = make_tree(tmp_path / "src", {f"f{i}.txt": "x" * 4096 * i for i in range(30)})
    for attempt in range(20):
        dst = tmp_path / f"dst{attempt}"
        errors = []

        def copy():
            try:
                copy_tree_local(str(src), str(dst))
            except OSError as error:
                errors.append(error)
        threads = [threading.Thread(target=copy) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert listing(dst) == listing(src)


def test_a_failed_copy_leaves_no_partial_file(tmp_path):
    from launcher.ssh.file_sync import _apply_locally

    def fetch(entry, path):
        with open(path, "w") as handle:
            handle.write("half")
        raise OSError(28, "No space left on device")
    src = make_tree(tmp_path / "src", {"big.bin": "data"})
    plan = plan_local_source(str(src), str(tmp_path / "dst"))
    with pytest.raises(OSError, match="No space"):
        _apply_locally(plan, fetch)
    assert list((tmp_path / "dst").iterdir()) == []
