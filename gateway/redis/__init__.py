"""The Redis engine: everything that speaks to Redis (7.x) or Valkey, for several gateway replicas and
worker processes sharing one store.

    conn      the connections: redis-py's pool, and one spoken to directly for the hot paths
    keys      every key name, under one prefix
    codec     jobs, segments and events as stored and published
    scripts   the Lua scripts, each one atomic step (KEYS and ARGV documented beside each)
    store     RedisStore: a JobStore and WebhookStore (gateway.store.base); its commits publish
    queue     RedisQueue: a route's work queue (gateway.work.queue.WorkQueue), a stream per route
    bus       RedisBus: an EventBus (gateway.bus.base) that subscribes to what the store publishes

The data flow: the store's create script stores a job, queues it on its route's stream and publishes
its first revision; a queue (in whichever process) hands it to a worker; each later revision is a save
script that stores it and publishes it; every process's bus hands what was published to its hub.
"""

from __future__ import annotations

from gateway.redis.bus import RedisBus
from gateway.redis.queue import RedisQueue, consumer_name
from gateway.redis.store import RedisStore

__all__ = ["RedisBus", "RedisQueue", "RedisStore", "consumer_name"]
