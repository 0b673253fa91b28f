"""The Dramatiq broker and publishing of job messages.

RabbitMQ: publisher confirms on (a publish returns only once the broker has the message on disk, and an
unroutable message raises), durable classic queues with ``x-max-priority``, each with Dramatiq's ``.DQ`` and
``.XQ``; a small prefetch so that priorities order what the worker takes next. Embedded: Dramatiq's
StubBroker. The middleware stack is Conveyor's own: no Dramatiq ``Retries`` (see service/tracking.py).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import dramatiq
import pika.exceptions
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import BrokerConnectionError as DramatiqConnectionError
from dramatiq.middleware import Middleware, ShutdownNotifications, TimeLimit
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from service.config import Settings
from service.errors import BackendUnavailable
from service.job import Job
from service.message import GEN_OPTION, job_message

__all__ = ["build_broker", "publish", "queue_depths", "ping"]

logger = logging.getLogger(__name__)

#: pika connection parameters added to the broker URL unless it sets them: fail fast instead of hanging
#: when RabbitMQ is down or blocks publishers on a resource alarm.
_AMQP_DEFAULTS = {"blocked_connection_timeout": "5", "socket_timeout": "5", "connection_attempts": "1",
                  "heartbeat": "30"}


def amqp_url(url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in _AMQP_DEFAULTS.items():
        query.setdefault(key, value)
    return urlunsplit(parts._replace(query=urlencode(query)))


class Prefetch(Middleware):
    """Prefetch no more than the worker can run at once (its thread count, or ``prefetch`` if set).

    RabbitMQ priorities only reorder messages that are not yet delivered; Dramatiq's default of twice the
    thread count keeps a second batch buffered in the worker, which a newly submitted high-priority job
    then waits behind. A delayed queue is not used by Conveyor, so its prefetch is kept small too.
    """

    def __init__(self, prefetch: int = 0) -> None:
        self.prefetch = prefetch

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.queue_prefetch = self.prefetch or worker.worker_threads
        worker.delay_prefetch = min(worker.delay_prefetch, 10 * worker.worker_threads)


class PlainResults(Results):
    """Dramatiq's Results middleware for plain actors only.

    A Conveyor job's result is written by JobTracking in the same Lua step as ``succeeded`` (same key and
    encoding, so ``RedisBackend.get_result`` reads it). Dramatiq's own middleware would also store ``None``
    for every *skipped* message, so a duplicate delivery of a finished job would wipe its result.
    """

    def after_process_message(self, broker, message, *, result=None, exception=None):  # type: ignore[no-untyped-def]
        if GEN_OPTION not in message.options:
            super().after_process_message(broker, message, result=result, exception=exception)

    def after_skip_message(self, broker, message):  # type: ignore[no-untyped-def]
        if GEN_OPTION not in message.options:
            super().after_skip_message(broker, message)

    def after_nack(self, broker, message):  # type: ignore[no-untyped-def]
        if GEN_OPTION not in message.options:
            super().after_nack(broker, message)


class _ResultsPresentFilter(logging.Filter):
    """Drops the worker's "you haven't added the Results middleware" warning.

    Dramatiq's worker looks for ``Results`` by exact type (``type(m) is Results``), so it misses
    ``PlainResults`` and would log that warning for every job that returns a value, although Conveyor
    stores every result (tracking for jobs, ``PlainResults`` for plain actors, which warns itself when an
    actor lacks ``store_results``).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "haven't added the Results middleware" not in record.getMessage()


def _quiet_results_warning() -> None:
    worker_logger = logging.getLogger("dramatiq.worker.WorkerThread")
    if not any(isinstance(f, _ResultsPresentFilter) for f in worker_logger.filters):
        worker_logger.addFilter(_ResultsPresentFilter())


def build_broker(settings: Settings, tracking: Middleware, backend: RedisBackend) -> dramatiq.Broker:
    """Build the broker with Conveyor's middleware and make it Dramatiq's global broker."""
    _quiet_results_warning()
    middleware: list[Middleware] = [
        TimeLimit(),
        ShutdownNotifications(),
        tracking,
        PlainResults(backend=backend, result_ttl=settings.result_ttl_s * 1000),
    ]
    broker: dramatiq.Broker
    if settings.embedded_broker:
        broker = StubBroker(middleware=middleware)
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=amqp_url(settings.broker_url), confirm_delivery=True,
                                max_priority=settings.max_priority, middleware=middleware)
    broker.add_middleware(Prefetch(settings.queue_prefetch), before=TimeLimit)
    dramatiq.set_broker(broker)
    return broker


def publish(broker: dramatiq.Broker, job: Job) -> None:
    """Publish the job's message and wait for the broker's confirm. Raises BackendUnavailable."""
    try:
        broker.enqueue(job_message(job))
    except (DramatiqConnectionError, pika.exceptions.AMQPError, OSError) as exc:
        logger.warning("publish of job %s failed: %s", job.id, type(exc).__name__)
        raise _broker_down() from exc


def _broker_down() -> BackendUnavailable:
    return BackendUnavailable("the message broker (RabbitMQ) is unavailable", details={"backend": "broker"})


def queue_depths(broker: dramatiq.Broker, queues: list[str]) -> dict[str, dict[str, int]]:
    """Messages waiting in each queue, its delay queue and its dead-letter queue."""
    out: dict[str, dict[str, int]] = {}
    for name in queues:
        try:
            if isinstance(broker, StubBroker):
                q = broker.queues.get(name)
                dq = broker.queues.get(name + ".DQ")
                main, delayed = (q.qsize() if q else 0), (dq.qsize() if dq else 0)
                dead = sum(1 for m in broker.dead_letters if m.queue_name == name)
            else:
                main, delayed, dead = broker.get_queue_message_counts(name)  # type: ignore[attr-defined]
        except (DramatiqConnectionError, pika.exceptions.AMQPError, OSError) as exc:
            _reset_connection(broker)
            raise _broker_down() from exc
        out[name] = {"ready": main, "delayed": delayed, "dead": dead}
    return out


def _reset_connection(broker: dramatiq.Broker) -> None:
    """Drop this thread's broken RabbitMQ connection so that the next call opens a new one."""
    try:
        del broker.connection  # type: ignore[attr-defined]
    except Exception:
        pass


def ping(broker: dramatiq.Broker) -> bool:
    """Whether the broker answers (a passive look at nothing for the StubBroker)."""
    if isinstance(broker, StubBroker):
        return True
    try:
        conn = broker.connection  # type: ignore[attr-defined]
        conn.process_data_events(time_limit=0)
        return bool(conn.is_open)
    except (DramatiqConnectionError, pika.exceptions.AMQPError, OSError):
        _reset_connection(broker)
        return False
