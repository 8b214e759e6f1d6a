"""Where corral lives on a node: the layout contract others rely on.

    $HOME/.corral/envs/<wheelhouse hash>/     one installed environment per wheelhouse
        pyvenv.cfg                            home = <dir of the node's python>, system
                                              site-packages visible (users' own packages)
        bin/python3, bin/python               symlinks to the node's interpreter
        bin/corral                            console script, shebang = this env's python3
        lib/pythonX.Y/site-packages/          corral and its dependencies (unpacked wheels)
        corral-ship.json                      what was installed (ShipRecord)
    $HOME/.corral/env -> envs/<hash>          the active environment (replaced atomically)
    $HOME/.corral/incoming/<hash>-<token>/    an upload being staged (deleted after install)

So `"$HOME/.corral/env/bin/python3"` and `"$HOME/.corral/env/bin/corral"` are the corral a
user ran `up` with (whoever stops processes on a node calls the former, falling back to
`python3`). Environments are self-contained directories: installing one never touches
another, running processes keep the env they started from (their scripts name the
hash directory, not the `env` link), and at most two are kept (the newest and the one
it replaced) unless a process still uses an older one.

Commands the launcher runs on a node see the env first: CORRAL_ENV and PATH
(`node_env_vars`), expanded by the node's shell, so no round trip is needed to learn
the node's home directory.
"""
from __future__ import annotations

import posixpath
import sys

CORRAL_DIR = ".corral"                  # under $HOME
ENVS_DIR = f"{CORRAL_DIR}/envs"
ACTIVE_ENV = f"{CORRAL_DIR}/env"
INCOMING_DIR = f"{CORRAL_DIR}/incoming"
SHIP_RECORD = "corral-ship.json"
KEEP_ENVS = 2

# The active env as a node's shell writes it (expanded there).
ACTIVE_ENV_SHELL = '$HOME/' + ACTIVE_ENV
ENV_PYTHON_SHELL = f'{ACTIVE_ENV_SHELL}/bin/python3'


def env_dir(home: str, wheelhouse_hash: str) -> str:
    """The environment of one wheelhouse on a node whose $HOME is `home`."""
    return posixpath.join(home, ENVS_DIR, wheelhouse_hash)


def active_env(home: str) -> str:
    return posixpath.join(home, ACTIVE_ENV)


def incoming_dir(home: str, wheelhouse_hash: str, token: str) -> str:
    return posixpath.join(home, INCOMING_DIR, f"{wheelhouse_hash}-{token}")


def ships_to(runner) -> bool:
    """Whether a node reached through `runner` gets corral shipped: it is another
    machine, reached over SSH (the process provider's LocalRunner runs here). No runner
    is an SSHRunner unless launcher.ssh.runner was imported, so this imports nothing."""
    ssh_runner = sys.modules.get("launcher.ssh.runner")
    return ssh_runner is not None and isinstance(runner, ssh_runner.SSHRunner)


class NodeShellValue(str):
    """An environment value the node's shell expands (`$HOME/...`, `...:$PATH`).
    launcher.ssh.runner.env_prefix writes it inside double quotes instead of single
    quotes. Only built here, from constants and paths corral chose: never user text."""

    expand_on_node = True


def node_env_vars(env: str | None = None) -> dict[str, str]:
    """CORRAL_ENV and PATH for a command on an SSH node: `env` is the exact environment
    when the caller knows it (bootstrap just installed or found it), else the active one.
    PATH keeps the node's own entries after the env's bin directory."""
    env_value = _shell_escape(env) if env else ACTIVE_ENV_SHELL
    return {"CORRAL_ENV": NodeShellValue(env_value),
            "PATH": NodeShellValue(f"{env_value}/bin:$PATH")}


def _shell_escape(path: str) -> str:
    """`path` made safe inside double quotes."""
    for char in '\\"$`':
        path = path.replace(char, "\\" + char)
    return path


# An interactive shell for `corral attach` that still has the env first on PATH: a login
# shell reads /etc/profile, which on Debian and others sets PATH afresh. bash reads the
# same profile files from an rc file given on fd 3, then puts the env first; other
# shells get a plain login shell with CORRAL_ENV set.
ATTACH_SHELL_COMMAND = """\
if [ -z "$SHELL" ] || [ "${SHELL##*/}" = bash ]; then
exec bash --rcfile /dev/fd/3 -i 3<<'__corral_rc'
[ -r /etc/profile ] && . /etc/profile
for __corral_f in ~/.bash_profile ~/.bash_login ~/.profile; do
  if [ -r "$__corral_f" ]; then . "$__corral_f"; break; fi
done
unset __corral_f
[ -n "$CORRAL_ENV" ] && PATH="$CORRAL_ENV/bin:$PATH" && export PATH
exec 3<&-
__corral_rc
fi
exec "$SHELL" -l
"""
