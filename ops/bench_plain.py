"""The plain-Dramatiq baseline for ops/bench.py: one actor on RabbitMQ with confirms, default middleware.

Each run records its latency (now - sent_at) in a Redis list, which also tells the benchmark it finished.
Worker: ``BENCH_BROKER_URL=... BENCH_REDIS_URL=... BENCH_KEY=... dramatiq ops.bench_plain``.
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.rabbitmq import RabbitmqBroker

broker = RabbitmqBroker(url=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                        confirm_delivery=True, max_priority=9)
dramatiq.set_broker(broker)
_redis = redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
_key = os.environ.get("BENCH_KEY", "bench-plain")


@dramatiq.actor(queue_name="plain", max_retries=0)
def noop(payload: dict, sent_at: float) -> dict:
    _redis.rpush(_key, time.time() - sent_at)
    return payload
