"""CLI subcommands, one module each; see `resnetlab.cli.COMMANDS`."""
