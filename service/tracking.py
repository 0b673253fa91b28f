"""JobTracking: Dramatiq middleware that mirrors each message's life into the job store and owns retries.

Conveyor replaces Dramatiq's ``Retries`` middleware: a retry is a ``running -> retrying`` transition that
puts the job in the Redis schedule (due after its backoff) in the same Lua call, after which the message is
acked; the promoter publishes the next generation when it is due. So no retry waits unacked in worker memory
(``.DQ``), and a broker outage at retry time cannot lose the job (Dramatiq PR #545): the state is in Redis
first. A job that fails for good is recorded ``failed`` first, then its message is nacked into ``<queue>.XQ``.

Every published message carries ``conveyor_gen``, the record's generation when it was published. A message
runs only if its generation is the record's and the job is queued/retrying, or running and *redelivered*
(its worker died). Anything else - a duplicate publish, a late delivery, an old ``.XQ`` copy re-driven by hand,
a cancelled or finished job - is skipped and acked quietly.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import dramatiq
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.middleware.threading import raise_thread_exception
from dramatiq.results.backend import ResultBackend
from dramatiq.results.result import wrap_result

from service.context import JobContext, clear_current, set_current
from service.errors import BackendUnavailable, JobCancelled, RetryJob
from service.hooks import fire_final
from service.job import now_ms
from service.message import GEN_OPTION, OPTIONS_OPTION, job_from_message
from service.state import JobState
from service.store import TransitionResult

if TYPE_CHECKING:
    from service.registry import Registry
    from service.store import JobStore

__all__ = ["JobTracking"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a store write inside the worker is retried while Redis is unreachable.
STORE_RETRY_S = 30.0
#: Attempts kept in a record's history.
HISTORY_LEN = 10


class JobTracking(Middleware):
    """Keep the job record in step with Dramatiq, and store each job's result with its ``succeeded`` state."""

    def __init__(self, store: JobStore, registry: Registry, backend: ResultBackend, *, result_ttl_ms: int,
                 max_crash_redeliveries: int = 3,
                 heartbeat_s: float = 5.0, background: list[Callable[[threading.Event], None]] | None = None) -> None:
        self.store = store
        self.registry = registry
        self.backend = backend
        self.result_ttl_ms = result_ttl_ms
        self.max_crash_redeliveries = max_crash_redeliveries
        self.heartbeat_s = heartbeat_s
        self.background = background or []
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._running: dict[str, int] = {}  # job id -> worker thread id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- helpers --------------------------------------------------------------------------------------

    def _retrying(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + STORE_RETRY_S
        delay = 0.1
        while True:
            try:
                return fn()
            except BackendUnavailable:
                if time.monotonic() > deadline:
                    raise
                logger.warning("job store unavailable; retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    # -- before ---------------------------------------------------------------------------------------

    def before_process_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        gen = message.options.get(GEN_OPTION)
        if gen is None:
            return  # a plain Dramatiq send: run it untracked
        job_id = message.message_id
        redelivered = bool(getattr(message, "redelivered", False))
        sources = {JobState.QUEUED, JobState.RETRYING} | ({JobState.RUNNING} if redelivered else set())

        def start() -> TransitionResult:
            return self.store.transition(
                job_id, JobState.RUNNING, from_=sources, generation=gen,
                set_fields={"started_at": now_ms(), "progress": 0, "progress_message": ""},
                incr={"attempts": 1}, max_crash=self.max_crash_redeliveries,
            )

        try:
            result = self._retrying(start)
            if not result.ok and result.reason == "not_found":
                # Redis lost the record (restarted without persistence): rebuild it from the message.
                logger.warning("job %s has no record; recreating it from its message", job_id)
                self._retrying(lambda: self.store.create(job_from_message(message._message)))
                result = self._retrying(start)
        except BackendUnavailable:
            logger.critical("job store unreachable; dead-lettering message %s of job %s", message.message_id, job_id)
            message.fail()
            raise SkipMessage() from None
        if not result.ok and result.reason == "poison":
            logger.error("job %s crashed its worker %d times; failing it", job_id, self.max_crash_redeliveries)
            res = self._fail(job_id, gen, "WorkerCrashed",
                             f"the worker running this job died {self.max_crash_redeliveries} times", "")
            message.fail()
            if res.ok:
                fire_final(job_id, JobState.FAILED, message.options.get(OPTIONS_OPTION, {}))
            raise SkipMessage()
        if not result.ok:
            logger.info("skipping message of job %s (gen %s): %s (state=%s, gen=%s)",
                        job_id, gen, result.reason, result.state and result.state.value, result.generation)
            raise SkipMessage()
        if result.previous is JobState.RUNNING:
            self._retrying(lambda: self.store.redis.hincrby(self.store.keys.job(job_id), "crash_redeliveries", 1))
        with self._lock:
            self._running[job_id] = threading.get_ident()
        set_current(JobContext(job_id, gen, result.attempts, self.store, cancel_requested=result.cancel_requested))

    # -- after ----------------------------------------------------------------------------------------

    def after_process_message(self, broker: dramatiq.Broker, message: MessageProxy, *,
                              result: Any = None, exception: BaseException | None = None) -> None:
        gen = message.options.get(GEN_OPTION)
        if gen is None:
            return
        job_id = message.message_id
        with self._lock:
            self._running.pop(job_id, None)
        clear_current()
        res: TransitionResult | None
        try:
            if exception is None:
                stored = (self.backend.build_message_key(message),
                          self.backend.encoder.encode(wrap_result(result)).decode(), self.result_ttl_ms)
                res = self._retrying(lambda: self.store.transition(
                    job_id, JobState.SUCCEEDED, from_={JobState.RUNNING}, generation=gen,
                    set_fields={"finished_at": now_ms(), "progress": 100}, result=stored))
            elif isinstance(exception, JobCancelled):
                res = self._retrying(lambda: self.store.transition(
                    job_id, JobState.CANCELLED, from_={JobState.RUNNING}, generation=gen,
                    set_fields={"finished_at": now_ms()}))
            else:
                res = self._after_failure(message, job_id, gen, exception)
            if res is not None and res.ok and res.state is not None and res.state.is_final:
                fire_final(job_id, res.state, message.options.get(OPTIONS_OPTION, {}))
        except BackendUnavailable:
            # The state could not be written: keep the message for operators rather than lose it.
            logger.critical("job store unreachable after job %s ran; dead-lettering its message", job_id)
            message.fail()
        except Exception:  # Dramatiq swallows hook errors; say so loudly.
            logger.exception("JobTracking failed to record the end of job %s", job_id)

    def _after_failure(self, message: MessageProxy, job_id: str, gen: int,
                       exc: BaseException) -> TransitionResult | None:
        job = self._retrying(lambda: self.store.get(job_id))
        if job is None:
            return None
        try:
            jt = self.registry.get(job.type)
            retryable = jt.retryable(exc)
            backoff = jt.backoff
        except Exception:
            retryable, backoff = False, None
        error_type = type(exc).__name__
        error_message = str(exc)[:2000]
        tb = "".join(traceback.format_exception(exc))[-8000:]
        attempt = {"attempt": job.attempts, "error_type": error_type, "error_message": error_message[:300],
                   "at": now_ms()}
        history = (job.history + [attempt])[-HISTORY_LEN:]
        fields = {"error_type": error_type, "error_message": error_message, "error_traceback": tb, "history": history}
        if retryable and job.retries < job.max_retries and backoff is not None:
            if isinstance(exc, RetryJob) and exc.delay_s is not None:
                delay_s = exc.delay_s
            else:
                delay_s = backoff.delay_s(job.retries + 1)
            due = now_ms() + int(delay_s * 1000)
            res = self.store.transition(
                job_id, JobState.RETRYING, from_={JobState.RUNNING}, generation=gen,
                set_fields={**fields, "scheduled_for": due}, incr={"retries": 1, "generation": 1}, due_ms=due)
            if res.ok:
                logger.info("job %s failed with %s; retry %d/%d in %.1fs",
                            job_id, error_type, job.retries + 1, job.max_retries, delay_s)
                return res
        res = self._fail(job_id, gen, error_type, error_message, tb, history=history)
        message.fail()
        return res

    def _fail(self, job_id: str, gen: int, error_type: str, error_message: str, tb: str,
              history: list[dict[str, Any]] | None = None) -> TransitionResult:
        fields: dict[str, Any] = {"error_type": error_type, "error_message": error_message,
                                  "error_traceback": tb, "finished_at": now_ms()}
        if history is not None:
            fields["history"] = history
        return self._retrying(lambda: self.store.transition(
            job_id, JobState.FAILED, from_={JobState.RUNNING}, generation=gen, set_fields=fields))

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        clear_current()

    # -- worker lifetime: heartbeat, cancel listener, background loops (the promoter) -----------------

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        from service.runtime import freeze_startup_heap  # runtime builds this middleware

        freeze_startup_heap()  # job modules are loaded, worker threads not yet started

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.clear()
        loops: list[Callable[[threading.Event], None]] = [self._heartbeat_loop, self._cancel_loop, *self.background]
        for loop in loops:
            name = f"conveyor-{getattr(loop, '__name__', 'promoter')}"
            t = threading.Thread(target=loop, args=(self._stop,), daemon=True, name=name)
            t.start()
            self._threads.append(t)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.store.worker_heartbeat(self.worker_id)
            except Exception:
                logger.warning("worker heartbeat failed", exc_info=True)
            stop.wait(self.heartbeat_s)

    def _cancel_loop(self, stop: threading.Event) -> None:
        """Interrupt running jobs that were cancelled (for actors that never report progress)."""
        while not stop.is_set():
            try:
                pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.store.keys.cancel_channel)
                while not stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg and msg.get("type") == "message":
                        self._interrupt(msg["data"].decode() if isinstance(msg["data"], bytes) else msg["data"])
            except Exception:
                logger.warning("cancel listener lost Redis; reconnecting", exc_info=True)
                stop.wait(1.0)

    def _interrupt(self, job_id: str) -> None:
        with self._lock:
            thread_id = self._running.get(job_id)
        if thread_id is not None:
            logger.info("cancelling running job %s", job_id)
            raise_thread_exception(thread_id, JobCancelled)
