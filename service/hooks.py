"""Hooks called when a job reaches a final state (e.g. the ``callback_url`` webhook).

A hook gets the job id, its final state and the job's submission options (e.g. ``callback_url``), so that
a hook with nothing to do costs no Redis read; it runs in the process that made the transition (a worker, or
the API for a cancel). Hook errors are logged, never raised: the transition has already happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from service.state import JobState

__all__ = ["on_final", "fire_final", "FinalHook"]

logger = logging.getLogger(__name__)

FinalHook = Callable[[str, JobState, Mapping[str, Any]], None]
_final_hooks: list[FinalHook] = []


def on_final(hook: FinalHook) -> FinalHook:
    """Register ``hook(job_id, state, options)``; usable as a decorator. Registering twice is a no-op."""
    if hook not in _final_hooks:
        _final_hooks.append(hook)
    return hook


def fire_final(job_id: str, state: JobState, options: Mapping[str, Any]) -> None:
    """Call every final hook; errors are logged."""
    for hook in list(_final_hooks):
        try:
            hook(job_id, state, options)
        except Exception:
            logger.exception("final-state hook %r failed for job %s", hook, job_id)
