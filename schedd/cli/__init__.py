"""The user commands: thin, stdlib-only HTTP clients (fast to start)."""
