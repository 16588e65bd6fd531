"""``im-ctl``: an admin command over im's HTTP API (docs/operations.md, "im-ctl").

``api`` makes one call of the API, bounded in time and size; ``cli`` holds the
subcommands, their output and the exit status of each outcome.
"""
