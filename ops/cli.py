"""The ``conveyor`` command: dev (everything in one process), api (gunicorn), scheduler, worker."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

__all__ = ["main"]

#: Exit codes.
RET_OK = 0
RET_CONFIG = 2

EPILOG = """examples:
  conveyor dev                      # API + worker + scheduler on an embedded broker and store, :8000
  CONVEYOR_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2F CONVEYOR_REDIS_URL=redis://127.0.0.1:6379/0 \\
      conveyor dev                  # the same on real RabbitMQ and Redis
  conveyor api --workers 2          # production API (gunicorn, threaded)
  dramatiq actors --threads 8       # a worker process (or: conveyor worker)
  conveyor scheduler                # promoter of delayed jobs and retries + house-keeping
  CONVEYOR_OPENAI_API_KEY=sk-... conveyor dev          # turn on images.generate
  CONVEYOR_STORAGE_BACKEND=supabase CONVEYOR_SUPABASE_URL=https://<project>.supabase.co \
      CONVEYOR_SUPABASE_KEY=<service key> conveyor dev  # store job outputs in Supabase (docs/job-types.md)
"""


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)


def _wait_forever() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()


def cmd_dev(args: argparse.Namespace) -> int:
    from dramatiq import Worker

    from service.config import Settings
    from service.runtime import configure
    from service.scheduler import start_scheduler
    from web import create_app

    settings = Settings.from_env()
    rt = configure(settings)
    app = create_app(runtime=rt)
    worker = Worker(rt.broker, worker_threads=args.threads or settings.dev_worker_threads, worker_timeout=100)
    worker.start()
    stop = threading.Event()
    start_scheduler(rt, stop, promoter=False)  # the in-process worker already promotes
    host, port = args.host or settings.host, args.port or settings.port
    log = logging.getLogger("conveyor")
    log.info("Conveyor dev on http://%s:%d (broker=%s, store=%s)", host, port,
             "embedded" if settings.embedded_broker else "rabbitmq", "embedded" if settings.embedded_store else "redis")
    for note in settings.integration_notes():
        log.info("  %s", note)
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        stop.set()
        worker.stop()
    return RET_OK


def cmd_api(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from service.config import Settings

    settings = Settings.from_env()

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host or settings.host}:{args.port or settings.port}")
            self.cfg.set("workers", args.workers or settings.api_workers)
            self.cfg.set("threads", args.threads or settings.api_threads)
            # A WebSocket or SSE client holds a thread and a connection: let every thread take one.
            self.cfg.set("worker_connections", max(1000, (args.threads or settings.api_threads) + 100))
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 120)
            self.cfg.set("graceful_timeout", 20)
            self.cfg.set("accesslog", "-" if args.access_log else None)

        def load(self):  # type: ignore[no-untyped-def]
            from service.runtime import freeze_startup_heap
            from web import create_app

            app = create_app()
            freeze_startup_heap()
            return app

    App().run()
    return RET_OK


def cmd_scheduler(args: argparse.Namespace) -> int:
    from service.runtime import configure
    from service.scheduler import start_scheduler

    rt = configure()
    rt.load_job_modules()
    stop = threading.Event()
    start_scheduler(rt, stop)
    logging.getLogger("conveyor").info("scheduler running")
    _wait_forever()
    stop.set()
    return RET_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from dramatiq.cli import main as dramatiq_main

    return int(dramatiq_main(["dramatiq", "actors", "--processes", str(args.processes), "--threads", str(args.threads)])
               or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("dev", help="API + worker + scheduler in one process")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--threads", type=int, help="worker threads")
    p.set_defaults(fn=cmd_dev)
    p = sub.add_parser("api", help="the HTTP API under gunicorn (gthread)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="gunicorn workers (CONVEYOR_API_WORKERS, 2)")
    p.add_argument("--threads", type=int, help="threads per worker (CONVEYOR_API_THREADS, 32)")
    p.add_argument("--access-log", action="store_true")
    p.set_defaults(fn=cmd_api)
    p = sub.add_parser("scheduler", help="promoter of due jobs + recurring house-keeping")
    p.set_defaults(fn=cmd_scheduler)
    p = sub.add_parser("worker", help="same as `dramatiq actors`")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.set_defaults(fn=cmd_worker)
    args = parser.parse_args(argv)
    from service.config import Settings
    from service.errors import ConfigError

    try:
        _logging(Settings.from_env().log_level)
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"conveyor: {exc}", file=sys.stderr)
        return RET_CONFIG


if __name__ == "__main__":
    sys.exit(main())
