"""A captured environment rebuilt on the node: ``pack`` (check out the code,
get the venv or image, as the job's owner), ``cache`` (the per-user venv
cache) and ``image`` (the environment as a docker image)."""
