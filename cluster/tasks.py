"""Stopping asyncio tasks reliably.

On Python 3.11 ``asyncio.wait_for`` swallows a cancellation that arrives just
as the awaited operation completes (CPython gh-86296, fixed in 3.12). Library
code we await (aetcd, grpc.aio) uses it, so a single ``task.cancel()`` can be
lost and a task meant to stop would run on forever. ``stop_task`` therefore
repeats the cancellation until the task has really finished.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

log = logging.getLogger("gearmesh.cluster")

_RECANCEL_INTERVAL: Final = 0.05


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it is done; never raises its error."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_INTERVAL)
    if not task.cancelled() and task.exception() is not None:
        log.debug("task %s ended with %r while being stopped", task.get_name(), task.exception())


async def stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        await stop_task(task)
