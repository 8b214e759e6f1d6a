"""The parts import each other only as their package docstrings say (autoscaler/__init__.py
lists what the autoscaler may use of the launcher)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

AUTOSCALER_MAY_IMPORT = {
    "launcher.config.load", "launcher.config.model", "launcher.providers",
    "launcher.providers.base", "launcher.bootstrap.stages", "launcher.bootstrap.hashing",
    "launcher.tags", "launcher.node_states", "launcher.errors", "launcher.paths",
}
ONLY_FROM = {"launcher.commands.cluster": {"follow.py", "commands.py"}}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def is_module(name: str) -> bool:
    base = REPO / name.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


@pytest.mark.parametrize("path", sorted((REPO / "autoscaler").glob("*.py")), ids=lambda p: p.name)
def test_autoscaler_uses_only_the_launcher_modules_it_declares(path):
    used = {name for name in imported_modules(path)
            if name.startswith("launcher") and is_module(name)}
    allowed = AUTOSCALER_MAY_IMPORT | {name for name, files in ONLY_FROM.items()
                                       if path.name in files}
    assert used <= allowed, f"{path.name} imports {sorted(used - allowed)}"


@pytest.mark.parametrize("package", ["runtime", "launcher"])
def test_the_runtime_and_launcher_do_not_import_the_autoscaler(package):
    for path in sorted((REPO / package).rglob("*.py")):
        used = {name for name in imported_modules(path) if name.split(".")[0] == "autoscaler"}
        assert not used, f"{path.relative_to(REPO)} imports {sorted(used)}"


def test_the_runtime_does_not_import_the_launcher():
    for path in sorted((REPO / "runtime").rglob("*.py")):
        used = {name for name in imported_modules(path) if name.split(".")[0] == "launcher"}
        assert not used, f"{path.relative_to(REPO)} imports {sorted(used)}"
