"""corral launcher: cluster config, node providers, SSH, bootstrap and the CLI."""
