"""The ``kubernetes`` pool driver: agent pods reserved from a cluster, watched by schedd.

Modules, each one job:

- :mod:`.config`    the ``driver = "kubernetes"`` keys of pool.toml and their checks (msgspec only)
- :mod:`.manifests` ``schedd pool render``: every object as a dict, pure (no client, no clock)
- :mod:`.client`    the thin interface over the official client that the rest calls
- :mod:`.podstate`  pod -> (virtual node phase, the reason a human needs), pure
- :mod:`.watch`     list + watch + relist on 410 + resync -> ``NodeSeen`` / ``NodeGone``
- :mod:`.apply`     ``manage = true``: server-side apply of the group StatefulSets

Client choice: ``kubernetes.aio`` (the official package's asyncio client, v37+),
not the synchronous client in threads. The daemon is one asyncio loop; a watch
is a long-lived streaming response, and with the sync client each watch pins a
thread that cannot be cancelled (it only notices a stop when the next event or
the server timeout arrives), so shutdown and reconnect logic would race the
threads. With ``kubernetes.aio`` a watch is a task that ``cancel()`` stops at
once, and list/patch calls interleave with scheduling without a thread pool.
Because the aio client is new, it stays behind :class:`.client.KubeApi`: the
driver never imports ``kubernetes`` outside ``client.py``, and watch frames are
read raw (``_preload_content=False``) as dicts, which skips the model
deserialisation (the costly part at 1,000 pod events per second) and shows the
``ERROR``/``BOOKMARK`` frames to our own 410 handling instead of the client's
silent single retry.
"""

__all__: list[str] = []
