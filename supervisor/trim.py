"""Give the kernel back the free pages of this process's malloc heap: glibc's ``malloc_trim(0)``.

A process that has finished a burst of work (its start: imports, sockets, an agent host; a worker's first
compile or a spawn) keeps the pages its freed memory sat on: glibc returns only the top of the main heap
on its own, never the free pages in the middle of it or of the other threads' arenas. ``malloc_trim(0)``
walks every arena and advises the kernel to drop each whole free page (``MADV_DONTNEED``); the heap's
layout is unchanged and a later allocation there faults in a zero page. Python's own small-object
allocator (obmalloc) already unmaps its empty arenas; what it asks of malloc (objects over 512 bytes,
buffers, dict tables) and every C library's allocations are what this releases.

:func:`trim` is the one call (a no-op returning False where the C library has no ``malloc_trim``, such as
musl). :class:`QuietTrim` is the policy for a long-lived loop: trim once the loop has been quiet for a while
after being busy, so a process that stays busy is never trimmed at every turn and an idle one is trimmed
once, not repeatedly.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

QUIET_S = 0.5  # quiet this long after a burst before trimming

_malloc_trim: Callable[[int], int] | None = None
_looked_up = False


def _lookup() -> Callable[[int], int] | None:
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            func = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc: nothing to trim with
            return None
        func.argtypes = [ctypes.c_size_t]
        func.restype = ctypes.c_int
        _malloc_trim = func
    return _malloc_trim


def available() -> bool:
    """Whether this C library can trim (glibc)."""
    return _lookup() is not None


def trim() -> bool:
    """Release the free pages of every malloc arena of this process; True if the C library released any.

    Costs a walk of the free lists (well under a millisecond for a daemon's heap of a few MB) and holds
    each arena's lock meanwhile, so call it between bursts of work, not on a hot path.
    """
    func = _lookup()
    return bool(func(0)) if func is not None else False


class QuietTrim:
    """Trim once a loop has been quiet for ``quiet_s`` after being busy; never twice for one burst.

    The loop calls :meth:`busy` when it did work (a message handled, an agent spawned) and :meth:`tick`
    every turn; the clock is injectable for tests.
    """

    def __init__(
        self,
        quiet_s: float | None = None,
        *,
        armed: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_s = QUIET_S if quiet_s is None else quiet_s
        self._clock = clock
        # armed: the time of the burst not trimmed for yet (at first, the process's own start), else None
        self._last_busy: float | None = clock() if armed else None
        self.trims = 0
        self.hooks: list[Callable[[], object]] = []  # run before each quiet trim (ChildContext.when_quiet)

    def busy(self) -> None:
        """Work happened now: trim when it has been over for ``quiet_s``."""
        self._last_busy = self._clock()

    def tick(self, now: float | None = None) -> bool:
        """Trim if a burst ended at least ``quiet_s`` ago and has not been trimmed for; whether it did.

        ``now`` is the clock's current reading when the caller has it already (a loop turn's)."""
        if self._last_busy is None:
            return False
        if (self._clock() if now is None else now) - self._last_busy < self.quiet_s:
            return False
        self._last_busy = None
        self.trims += 1
        for hook in list(self.hooks):
            try:
                hook()
            except Exception:  # never let an optional release break the loop: drop the hook instead
                self.hooks.remove(hook)
        trim()
        return True
