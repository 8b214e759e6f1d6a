"""The autoscaler: observe -> plan -> act on the head (`monitor`), with the planner a pure
function over a frozen snapshot (`planner`, `snapshot`, `decisions`).

What it may use of the launcher (tests/unit/test_layering.py keeps to it):
- `launcher.config.load`, `launcher.config.model`: the normalised cluster config;
- `launcher.providers` (`make_provider`) and `launcher.providers.base`: the NodeProvider
  interface and its records, never a provider module directly;
- `launcher.bootstrap.stages` and `launcher.bootstrap.hashing`: bootstrapping a node it
  launched, and the launch hash `corral up` tags nodes with;
- `launcher.tags`, `launcher.errors`, `launcher.paths`: shared names, errors, files;
- `launcher.node_states`: the table of node states and transitions, and the mapping of
  provider state, stage tag and runtime flags to the planner's node status;
- `launcher.commands.cluster`, only from its own CLI commands (`follow`): finding a
  cluster's head as every command does.
Nothing of `launcher.ssh`, `launcher.ship` or the other commands: the monitor reaches
nodes only through a provider and the bootstrap.
"""
