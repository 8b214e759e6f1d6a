"""Table-driven: every file in bad_configs/ must produce exactly the problems its
`# expect:` lines list (path, line, message text), and `corral validate` must fail on it
with exit code 2 and no traceback."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.config.load import load_config
from launcher.errors import ConfigErrors

CORPUS = Path(__file__).parent / "bad_configs"
BAD_FILES = sorted(CORPUS.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (?P<path>.+?) @ (?P<line>\S+) : (?P<text>.+)$")


def expectations(path: Path) -> list[tuple[str, int | None, str]]:
    found = []
    for line in path.read_text().splitlines():
        match = EXPECT.match(line)
        if match:
            found.append((
                "" if match["path"] == "-" else match["path"],
                None if match["line"] == "-" else int(match["line"]),
                match["text"].strip()))
    return found


def test_corpus_is_not_empty():
    assert len(BAD_FILES) >= 25
    for path in BAD_FILES:
        assert expectations(path), f"{path.name} has no '# expect:' lines"


@pytest.mark.parametrize("bad_file", BAD_FILES, ids=[path.stem for path in BAD_FILES])
def test_bad_config_reports_exactly_the_expected_problems(bad_file):
    with pytest.raises(ConfigErrors) as raised:
        load_config(bad_file)
    errors = raised.value.errors
    expected = expectations(bad_file)
    unmatched = list(errors)
    for path, line, text in expected:
        hits = [error for error in unmatched
                if error.path == path and error.line == line and text in error.message]
        assert hits, (f"expected {path!r} @ {line}: {text!r}; got:\n"
                      + "\n".join(str(error) for error in errors))
        unmatched.remove(hits[0])
    assert not unmatched, "unexpected problems:\n" + "\n".join(map(str, unmatched))
    for error in errors:
        assert error.source == str(bad_file)
        assert str(error).startswith(f"{bad_file}:")


@pytest.mark.timeout(120)
def test_corral_validate_fails_cleanly_on_every_bad_file():
    """One interpreter for the whole corpus (the CLI's main(), as the console script runs
    it), so the test stays fast; each file must exit 2 and print no traceback."""
    script = (
        "import sys\n"
        "from launcher.cli import main\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        main(['validate', name])\n"
        "    except SystemExit as done:\n"
        "        print(f'@@exit {name} {done.code}', flush=True)\n"
        "        sys.stderr.flush()\n"
        "    else:\n"
        "        print(f'@@exit {name} 0', flush=True)\n")
    result = subprocess.run([sys.executable, "-c", script, *map(str, BAD_FILES)],
                            capture_output=True, text=True, timeout=100,
                            cwd=Path(__file__).parents[2], env=dict(os.environ))
    codes = dict(line.split()[1:] for line in result.stdout.splitlines()
                 if line.startswith("@@exit"))
    assert codes == {str(path): "2" for path in BAD_FILES}
    assert "Traceback" not in result.stderr + result.stdout
    for path in BAD_FILES:
        assert f"{path}" in result.stderr
