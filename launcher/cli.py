"""The `corral` command. Subcommands are loaded only when called, so `corral --help`
and each command start fast, and each part (launcher, runtime, autoscaler) owns its own
command module. Only this module turns errors into exit codes: 0 ok, 1 operation failed,
2 bad usage or config."""
from __future__ import annotations

import importlib
import sys

import click

from launcher.errors import ClusterError

# name -> ("module:attribute", one-line help shown in `corral --help`)
COMMANDS = {
    "up": ("launcher.commands.up:up", "Create or update a cluster from its YAML file."),
    "down": ("launcher.commands.down:down", "Stop and remove every node of a cluster."),
    "exec": ("launcher.commands.remote:exec_command", "Run a shell command on cluster nodes."),
    "attach": ("launcher.commands.remote:attach", "Open an interactive shell on the head."),
    "rsync-up": ("launcher.commands.remote:rsync_up", "Copy local files to cluster nodes."),
    "rsync-down": ("launcher.commands.remote:rsync_down", "Copy files from the head to here."),
    "get-head-ip": ("launcher.commands.info:get_head_ip", "Print the head node's IP."),
    "get-worker-ips": ("launcher.commands.info:get_worker_ips", "Print worker IPs."),
    "status": ("launcher.commands.status:status", "Show nodes, their stages and the autoscaler."),
    "validate": ("launcher.commands.validate:validate", "Check a cluster YAML file."),
    "start": ("runtime.cli:start", "Start the runtime on this node (used by start commands)."),
    "stop": ("runtime.cli:stop", "Stop this node's runtime processes."),
    "health": ("runtime.cli:health", "Say whether this node's runtime services run."),
    "plan": ("autoscaler.commands:plan", "Show the nodes a given demand needs."),
    "simulate": ("autoscaler.commands:simulate", "Replay a demand trace through the planner."),
    "monitor": ("autoscaler.commands:monitor", "Follow the autoscaler's event log."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                return _unavailable(name)
            raise
        return getattr(module, attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, short) for name, (_, short) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str) -> click.Command:
    @click.command(name=name, help=COMMANDS[name][1], context_settings={
        "ignore_unknown_options": True, "allow_extra_args": True})
    def missing():
        raise click.UsageError(f"'corral {name}' is not available in this build.")
    return missing


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, _param, value: _print_version(ctx) if value else None,
              help="Show corral's version and where it runs from, then exit.")
def cli():
    """corral launches clusters from one YAML file, runs Python tasks on them with a
    Ray-shaped API, and grows or shrinks them with the queued work.

    \b
    Try:
      corral up configs/demo.yaml       # a cluster of local processes, no cloud needed
      corral exec configs/demo.yaml 'corral status'
      corral down configs/demo.yaml
    """


def version_text() -> str:
    """`corral 0.2.0 (editable checkout /src/corral; Python 3.11.7)`: the version, and
    whether this is an editable checkout or an installed copy (and where)."""
    from launcher import resources
    where = (f"editable checkout {resources.CHECKOUT_DIR}" if resources.is_checkout()
             else f"installed at {resources.PACKAGE_DIR.parent}")
    python = ".".join(map(str, sys.version_info[:3]))
    return f"corral {resources.version()} ({where}; Python {python})"


def _print_version(ctx: click.Context) -> None:
    click.echo(version_text())
    ctx.exit(0)


def main(argv: list[str] | None = None) -> None:
    try:
        # Without standalone mode click returns (not raises) a command's Exit(code).
        code = cli.main(args=argv, prog_name="corral", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort as abort:
        # click turns a Ctrl-C inside a command into Abort (from the KeyboardInterrupt);
        # a declined confirmation prompt is a plain Abort.
        if isinstance(abort.__cause__ or abort.__context__, KeyboardInterrupt):
            _interrupted()
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as error:
        error.show()
        sys.exit(2 if isinstance(error, click.UsageError) else error.exit_code)
    except (ClusterError, *_runtime_errors()) as error:
        click.secho(f"Error: {error}", err=True, fg="red")
        sys.exit(getattr(error, "exit_code", 1))
    except KeyboardInterrupt:
        _interrupted()
    except OSError as error:  # e.g. CORRAL_HOME is a file, a disk full, a permission
        click.secho(f"Error: {error}", err=True, fg="red")
        sys.exit(1)


def _runtime_errors() -> tuple[type[Exception], ...]:
    """The runtime's error type, once a command has imported the runtime (importing it
    only to catch its errors would cost every command ~0.1 s of zmq and the API)."""
    errors = sys.modules.get("runtime.errors")
    return (errors.RuntimeSystemError,) if errors is not None else ()


def _interrupted() -> None:
    click.echo("Interrupted.", err=True)
    sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
