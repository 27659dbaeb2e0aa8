"""How a rank runs: ``process`` (its own session under the supervisor, the
default) or in a sibling container through the Docker Engine API —
``containerize`` (the container's spec), ``runner`` (the small process that
creates, follows and removes it) and ``engine`` (the engine calls)."""
