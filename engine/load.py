"""How many turns the app is serving at once, lately: what a CPU's drawing steps are sized by.

The step budget (`[generator] cpu_step_budget`) was first shared by a batch's images only. But
concurrent sessions fall into groups that take turns: while one group's drawing runs, the
other's turns are being answered and sent again, so they arrive as the next batch, and a
group of two drew all five steps while six other sessions waited for it (measured: batches
of 2 and 6 alternating, the 2 at five steps costing as long as the 6 at two). The peak of
turns in flight over the last second sees every session that is taking turns, whichever
group it is in; a person searching alone still gets every step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class TurnLoad:
    """`with load.turn():` around each turn; `load.peak()` is the most turns that were in
    flight at once at any moment of the last `window_s` seconds (at least those in flight
    now). Text-only turns count too: they share the cores with the drawings."""

    def __init__(self, window_s: float = 1.0):
        self.window_s = window_s
        self._now = 0
        self._seen: deque[tuple[float, int]] = deque()  # (time, turns in flight then)
        self._lock = threading.Lock()

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._lock:
            self._now += 1
            self._note()
        try:
            yield
        finally:
            with self._lock:
                self._note()  # a long turn that ends now was in flight until now
                self._now -= 1

    def peak(self) -> int:
        with self._lock:
            self._forget()
            return max([self._now, *(n for _, n in self._seen)])

    def _note(self) -> None:
        self._seen.append((time.monotonic(), self._now))
        self._forget()  # kept short whether or not anyone asks for the peak

    def _forget(self) -> None:
        horizon = time.monotonic() - self.window_s
        while self._seen and self._seen[0][0] <= horizon:
            self._seen.popleft()
