"""`corral exec`, `attach`, `rsync-up`, `rsync-down`: work on a running cluster's nodes."""
from __future__ import annotations

import shlex
import threading
from concurrent.futures import ThreadPoolExecutor

import click

from launcher.bootstrap.command_runner import run_on_many
from launcher.commands.cluster import command_env, find_head, open_cluster, pick_node
from launcher.errors import ClusterError

MAX_PARALLEL = 32


def _run_on(provider, config, nodes, head, command, timeout_s, several: bool):
    """Run `command` on `nodes` at once, streaming each line of output as it arrives
    (prefixed `[node] ` when several nodes run it). Returns [(node, result, error)].
    Ctrl-C stops every running command (see run_on_many) and propagates."""
    runners, envs, errors = {}, {}, {}
    for node in nodes:
        try:
            runner = provider.command_runner(node)
            envs[node.id] = command_env(provider, config, node, head, runner)
            runners[node.id] = runner
        except (ClusterError, OSError) as error:
            errors[node.id] = str(error)
    lock = threading.Lock()

    def echo(node_id: str, stream: str, line: str) -> None:
        with lock:
            click.echo(f"[{node_id}] {line}" if several else line, err=stream == "stderr")
    try:
        results = run_on_many(runners, command, timeout_s=timeout_s, envs=envs,
                              on_output=echo, max_parallel=MAX_PARALLEL)
    finally:
        for runner in runners.values():
            runner.close()
    return [(node, results.get(node.id), errors.get(node.id)) for node in nodes]


def _exit_code_of(result) -> int:
    """The exit code `corral exec` ends with for one command's result."""
    if 0 <= result.exit_code < 256:
        return result.exit_code
    return 1  # a runner error (-1), or a code no process can exit with


def _ended_how(result) -> str:
    if result.signal_name:
        return f"killed by signal {result.signal_name} (exit {result.exit_code})"
    if result.exit_code == -1:
        return "could not run: " + (result.stderr.strip().splitlines() or ["?"])[-1]
    return f"exited {result.exit_code}"


@click.command(name="exec")
@click.argument("config_path", metavar="CONFIG")
@click.argument("command", nargs=-1, required=True)
@click.option("--all-nodes", is_flag=True, help="Run on every node (head and workers).")
@click.option("--node", "node_id", metavar="ID",
              help="Run on this node (its id; or its IP when only one node has it).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=None, metavar="SECONDS",
              help="Stop the command after this many seconds (exit code 124).")
def exec_command(config_path, command, all_nodes, node_id, timeout_s):
    """Run COMMAND on the head of CONFIG's cluster (or --node ID, or --all-nodes).

    COMMAND runs in a non-interactive shell with the cluster's environment (CORRAL_HEAD_IP,
    CORRAL_NODE_DIR, ...); its output is shown as it arrives, each line prefixed with
    `[node id]` when several nodes run it. Exit code: the command's (128+N when it was
    killed by signal N); with --all-nodes 1 if it failed on any node; 130 after Ctrl-C,
    which stops the command on every node."""
    if all_nodes and node_id:
        raise click.UsageError("--all-nodes and --node cannot be used together")
    text = command[0] if len(command) == 1 else shlex.join(command)
    with open_cluster(config_path) as (config, provider):
        head = find_head(provider, config)
        if all_nodes:
            nodes = provider.non_terminated_nodes()
        elif node_id:
            nodes = [pick_node(provider, config, node_id)]
        else:
            nodes = [head]
        several = len(nodes) > 1
        results = _run_on(provider, config, nodes, head, text, timeout_s, several)
    failed = []
    for node, result, error in results:
        prefix = f"[{node.id}] " if several else ""
        if error is not None:
            click.secho(f"{prefix}error: {error}", fg="red", err=True)
            failed.append(node.id)
        elif not result.ok:
            failed.append(node.id)
            if several or result.signal_name:
                click.secho(f"{prefix}{_ended_how(result)}", fg="red", err=True)
    if several:
        if failed:
            raise click.exceptions.Exit(1)
        return
    node, result, error = results[0]
    if error is not None or result.exit_code == -1:
        reason = error or result.stderr.strip() or "runner error"
        raise ClusterError(f"could not run the command on {node.id}: {reason}")
    if result.exit_code != 0:
        raise click.exceptions.Exit(_exit_code_of(result))


@click.command(name="attach")
@click.argument("config_path", metavar="CONFIG")
@click.option("--node", "node_id", metavar="ID", help="Attach to this node instead of the head.")
def attach(config_path, node_id):
    """Open an interactive shell on the head of CONFIG's cluster (a real terminal: window
    size and raw mode follow yours). The shell has the cluster's environment, with the
    corral environment `up` installed there first on PATH."""
    with open_cluster(config_path) as (config, provider):
        head = find_head(provider, config)
        node = pick_node(provider, config, node_id) if node_id else head
        runner = provider.command_runner(node)
        env = command_env(provider, config, node, head, runner)
        from launcher.ssh.runner import env_prefix
        shell = 'exec "${SHELL:-bash}" -l'
        if "CORRAL_ENV" in env:  # a login shell's profile would put the env off PATH
            from launcher.ship.layout import ATTACH_SHELL_COMMAND
            shell = ATTACH_SHELL_COMMAND
        code = runner.interactive_shell(env_prefix(env) + shell)
    if code:
        raise click.exceptions.Exit(code if 0 < code < 256 else 1)


@click.command(name="rsync-up")
@click.argument("config_path", metavar="CONFIG")
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@click.option("--head-only", is_flag=True, help="Copy to the head only.")
def rsync_up(config_path, source, target, head_only):
    """Copy local SRC (file or directory) to DST on every node (unchanged files are
    skipped; the config's rsync_exclude applies). A relative DST is relative to the
    node's home (process provider: the node's directory)."""
    with open_cluster(config_path) as (config, provider):
        head = find_head(provider, config)
        nodes = [head] if head_only else provider.non_terminated_nodes()

        def one(node):
            try:
                copied = provider.command_runner(node).put(
                    source, target, exclude=list(config.rsync_exclude))
                return node, copied, None
            except (ClusterError, OSError) as error:
                return node, 0, str(error)
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
            results = list(pool.map(one, nodes))
    failed = []
    for node, copied, error in results:
        if error:
            click.secho(f"{node.id}: failed: {error}", fg="red", err=True)
            failed.append(node.id)
        else:
            click.echo(f"{node.id}: {copied} file(s) copied")
    if failed:
        raise ClusterError(f"rsync-up failed on {', '.join(failed)}")


@click.command(name="rsync-down")
@click.argument("config_path", metavar="CONFIG")
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@click.option("--node", "node_id", metavar="ID", help="Copy from this node instead of the head.")
def rsync_down(config_path, source, target, node_id):
    """Copy SRC (file or directory) from the head of CONFIG's cluster to local DST
    (unchanged files are skipped)."""
    with open_cluster(config_path) as (config, provider):
        node = pick_node(provider, config, node_id) if node_id else find_head(provider,
                                                                             config)
        try:
            copied = provider.command_runner(node).get(source, target)
        except OSError as error:
            raise ClusterError(f"rsync-down from {node.id} failed: {error}") from error
    click.echo(f"{node.id}: {copied} file(s) copied")
