"""Conveyor's actors. Importing this package configures the broker, so ``dramatiq actors`` just works.

One module per job family; each declares its job types with :func:`service.registry.job_type`.
"""

from __future__ import annotations

from service.runtime import configure

runtime = configure()
broker = runtime.broker

from actors import diagnostic, images, notify  # noqa: E402,F401  (registers job types)

__all__ = ["broker", "runtime"]
