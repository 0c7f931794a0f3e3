"""The command-line programs: `jws` (the client, `jobworker.cli.jws`) and `jwsd` (the daemon, `jobworker.cli.jwsd`)."""
