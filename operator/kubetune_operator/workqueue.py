"""A small per-key work queue (as controller-runtime's): events only mark a FineTuneJob dirty.

* one worker at a time per key, so two events never reconcile the same FineTuneJob at once;
* events that arrive while a key is being reconciled coalesce into one more pass;
* a failed pass is retried with exponential backoff (1 s doubling to 60 s);
* at most `concurrency` keys are reconciled at the same time;
* with `one_timer`, a key has at most one delayed request: a new one replaces the pending one
  (FineTuneSchedules: each pass says when the next is due, and passes caused by events must not
  pile up timers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger(__name__)

Handler = Callable[[Hashable], Awaitable[float | None]]


class WorkQueue:
    def __init__(
        self,
        handler: Handler,
        concurrency: int = 8,
        max_backoff: float = 60.0,
        one_timer: bool = False,
    ) -> None:
        self.handler = handler
        self.one_timer = one_timer
        self._timer_of: dict[Hashable, asyncio.TimerHandle] = {}
        self.max_backoff = max_backoff
        self._sem = asyncio.Semaphore(concurrency)
        self._running: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    def request(self, key: Hashable, after: float = 0.0) -> None:
        """Reconcile `key` soon (or after `after` seconds)."""
        if self._closed:
            return
        if after > 0:
            loop = asyncio.get_running_loop()
            handle: asyncio.TimerHandle | None = None

            def fire() -> None:
                if handle is not None:
                    self._timers.discard(handle)
                    if self._timer_of.get(key) is handle:
                        del self._timer_of[key]
                self.request(key)

            if self.one_timer and (old := self._timer_of.pop(key, None)) is not None:
                old.cancel()
                self._timers.discard(old)
            handle = loop.call_later(after, fire)
            self._timers.add(handle)
            if self.one_timer:
                self._timer_of[key] = handle
            return
        self._dirty.add(key)
        if key in self._running:
            return
        self._running.add(key)
        task = asyncio.get_running_loop().create_task(self._work(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self, key: Hashable) -> None:
        try:
            while key in self._dirty and not self._closed:
                self._dirty.discard(key)
                async with self._sem:
                    try:
                        delay = await self.handler(key)
                        self._failures.pop(key, None)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        n = self._failures.get(key, 0) + 1
                        self._failures[key] = n
                        delay = min(self.max_backoff, 2.0 ** (n - 1))
                        log.exception(
                            "reconcile of %s failed (attempt %d); retrying in %.0fs", key, n, delay
                        )
                if delay:
                    self.request(key, after=delay)
        finally:
            self._running.discard(key)

    def busy(self) -> bool:
        return bool(self._running)

    async def close(self) -> None:
        self._closed = True
        for handle in list(self._timers):
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
