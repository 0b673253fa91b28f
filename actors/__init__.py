"""Conveyor's actors. Importing this package configures the broker, so ``dramatiq actors`` just works.

One module per job family; each declares its job types with :func:`service.registry.job_type`.
"""

from __future__ import annotations

from service.runtime import configure, freeze_startup_heap

runtime = configure()
broker = runtime.broker

from actors import diagnostic, images, notify  # noqa: E402,F401  (registers job types)

freeze_startup_heap()  # before the worker starts: keeps full GC passes short (see the function)

__all__ = ["broker", "runtime"]
