"""The shared backend: Redis standalone (TCP, TLS, Unix socket), Sentinel or Cluster.

Each operation is a Lua script from ``backends/lua/``, run with one ``EVALSHA`` (reloaded with
``EVAL`` on ``NOSCRIPT``, as after a restart, a failover or ``SCRIPT FLUSH``). One transport
serves every topology: sync decisions go over one connection per thread and node, asyncio
decisions over one pipelined connection per event loop and node, so 50 concurrent tasks share
round trips while each decision stays its own atomic script. redis-py supplies the topology
(Sentinel's primary, the Cluster's slot map) and the connection settings.

The parts, one module each: ``_settings`` (timeouts, how to connect to a node), ``_topology``
(which node serves a key; refreshed after failures), ``_threads`` and ``_lane`` (the sync and
the asyncio transport), ``_loops`` (per event loop state, released when the loop closes),
``_health`` (a breaker per node), ``_resp`` (RESP encoding), ``_scripts`` (the Lua scripts),
``_clients`` (redis-py clients from URLs) and ``_backend`` (:class:`RedisBackend`).
"""

from ._backend import RedisBackend
from ._health import HealthBreaker
from ._scripts import script
from ._settings import Settings

__all__ = ["HealthBreaker", "RedisBackend", "Settings", "script"]
