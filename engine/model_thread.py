"""One thread runs every model call of a process, and batches what concurrent callers ask.

Why one thread: torch's CPU kernels parallelise with OpenMP (libgomp), and every thread that
runs them gets a team of worker threads of its own. Once a second team exists on a machine
with few cores, libgomp stops spinning between parallel regions, and the many small kernels
of our models each wait on a wake-up, on every thread that runs torch, for as long as more
than one such thread is alive: measured on 2 cores, the world generator's six steps took
~210 ms while one thread ran torch and ~480 ms once a second one had. A server runs its
events on a pool of long-lived threads, so every turn of the app paid that. Here the models
are loaded and run by one long-lived thread, and other threads hand it their calls and wait:
nothing else in a process that has one may run torch itself.

Why batch: calls queued under the same key while the thread is busy (the text queries or the
pseudo-images of concurrent sessions' turns) are merged into one call of the model, up to
`max_batch` items. A caller gets exactly its own items' results: batching changes how fast
an answer comes, and a result only by float rounding (a batch runs other kernels; measured on
the world generator: at most one level of one pixel channel in 255).

Why light calls first: a turn makes a few calls of milliseconds (its text, the pseudo-image's
embedding, the search) around one of hundreds (the drawing). Served oldest first, each light
call of a turn waited behind whole drawings queued by other sessions, so with 8 sessions a
turn waited for about three batches of drawings instead of one (docs/BENCHMARKS.md,
"Concurrent sessions"). Now a heavy call runs only when no light call waits, and a
background one (a picture drawn only to be shown) only when nothing else does.

Why a drawing may wait a moment for company: in a busy app, concurrent turns come back a few
milliseconds apart. The first to arrive when the thread is free started a drawing alone, and
the others waited for it and then drew in a batch of their own: two drawings where one batch
costs little more than one image. A drawing told how many turns are being served
(`company`) waits up to `gather_s` after it arrived for them to join it (at most 30 ms in
the world profile; measured in docs/BENCHMARKS.md, "Concurrent sessions"), while quick calls
still run; one that has already waited that long behind other work goes at once.

Why one BLAS thread for NumPy: its products in a turn are small (ADaFuSE's head, the
questioner's scores, Rocchio), and OpenBLAS's workers spin for a while after each product,
taking the cores from torch's next kernels. With one thread, the text stage of a world turn
fell from 88-95 to 42 ms p50 on two cores, and ADaFuSE's stage from 3.6 to 1.1 ms
(docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from threadpoolctl import ThreadpoolController

# A call's rank: of the waiting calls, the lowest rank runs first (then the oldest).
LIGHT, HEAVY, BACKGROUND = 0, 1, 2  # milliseconds; a drawing; a drawing only to be shown


@dataclass
class _Call:
    fn: Callable
    items: list | None = None  # a batchable call: fn(items) -> one result per item
    key: Hashable | None = None
    max_batch: int = 1
    rank: int = LIGHT  # which waiting call goes first: the lowest rank, then the oldest
    company: int = 0  # items (its own too) the caller expects in its batch; 0: no wait
    gather_s: float = 0.0  # how long after it arrived it may wait for them
    # The caller's context variables (Gradio's request, what ZeroGPU's spaces.GPU reads to
    # know whose quota a call spends) go with the call; a batch runs in its first caller's
    # (so on ZeroGPU the first caller's quota pays for the whole batch).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    done: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.monotonic)
    result: Any = None
    error: BaseException | None = None


class ModelThread:
    def __init__(self, name: str = "itir-models") -> None:
        self._calls: deque[_Call] = deque()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def here(self) -> bool:
        """Whether the caller is the model thread itself (its calls then run inline)."""
        return threading.current_thread() is self._thread

    def run(self, fn: Callable, *args, **kwargs) -> Any:
        """fn(*args, **kwargs) on the model thread; its exception is raised here."""
        if self.here:
            return fn(*args, **kwargs)
        return self._wait(_Call(lambda: fn(*args, **kwargs)))

    def batched(self, key: Hashable, fn: Callable[[list], Sequence], items: Sequence,
                max_batch: int, rank: int = LIGHT, company: int = 0,
                gather_s: float = 0.0) -> list:
        """fn's results for `items`, where fn maps a list of items to one result each. Calls
        waiting with an equal `key` are merged into one call of the first one's fn, so the
        key must name the model and the settings (encoder, seed, ...), not only the stage.
        `rank`: HEAVY waits while a LIGHT call waits (a drawing must not hold up the quick
        steps of other turns), BACKGROUND while any other call waits (a picture drawn only to
        be shown must not hold up another session's search). `company`: how many items the
        caller expects in its batch (its own too), waited for up to `gather_s` after it
        arrived; a LIGHT call never waits."""
        call = _Call(fn, list(items), key, max(max_batch, 1), rank, min(company, max_batch),
                     gather_s)
        if not call.items:
            return []
        if self.here:
            self._execute([call])
            if call.error is not None:
                raise call.error
            return call.result
        return self._wait(call)

    def _wait(self, call: _Call) -> Any:
        with self._ready:
            self._calls.append(call)
            self._ready.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._calls:
                    self._ready.wait()
                self._gather()
                group = self._next_group()
            self._execute(group)
            if len(group) > 1 and any(call.error is not None for call in group):
                # One caller's bad item (or a batch too big for the device) must not fail
                # the others: each goes again alone and gets its own answer.
                for call in group:
                    call.error = None
                    self._execute([call])
            for call in group:
                call.done.set()

    def _gather(self) -> None:
        """Hold the next call while it expects company that has not come yet (and no quicker
        call waits), up to its `gather_s` after it arrived. Called with the lock held."""
        while True:
            first = min(self._calls, key=lambda call: call.rank)
            if not first.company or first.rank == LIGHT:
                return
            waiting = sum(len(c.items) for c in self._calls
                          if c.key == first.key and c.rank == first.rank)
            left = first.enqueued + first.gather_s - time.monotonic()
            if waiting >= first.company or left <= 0:
                return
            self._ready.wait(left)

    def _next_group(self) -> list[_Call]:
        """The oldest call of the lowest rank, with every waiting call of its key and rank
        that fits in its batch (a picture only to be shown does not ride in a turn's batch)."""
        first = min(self._calls, key=lambda call: call.rank)  # the first such: the oldest
        self._calls.remove(first)
        group, size = [first], len(first.items or ())
        if first.key is None:
            return group
        for other in list(self._calls):
            if (other.key == first.key and other.rank == first.rank
                    and size + len(other.items) <= first.max_batch):
                self._calls.remove(other)
                group.append(other)
                size += len(other.items)
        return group

    @staticmethod
    def _execute(group: list[_Call]) -> None:
        """Run one call, or one batch of calls; results or the error go on each call."""
        first = group[0]
        try:
            if first.items is None:
                first.result = first.context.run(first.fn)
                return
            items = [item for call in group for item in call.items]
            results = list(first.context.run(first.fn, items))
            if len(results) != len(items):
                raise RuntimeError(f"a batched model call gave {len(results)} results for "
                                   f"{len(items)} items")
            start = 0
            for call in group:
                call.result = results[start:start + len(call.items)]
                start += len(call.items)
        except BaseException as e:  # noqa: BLE001  (handed to the callers, never lost here)
            for call in group:
                call.error = e


def _one_blas_thread_for_numpy() -> None:
    """NumPy's own BLAS only (the one its wheel ships): a BLAS that torch or FAISS use for
    their large products keeps its threads."""
    controller = ThreadpoolController()
    numpy_blas = [lib.filepath for lib in controller.lib_controllers
                  if lib.user_api == "blas" and "numpy" in lib.filepath]
    if numpy_blas:
        controller.select(filepath=numpy_blas).limit(limits=1)  # process-wide, from now on


_shared: ModelThread | None = None
_shared_lock = threading.Lock()


def model_thread() -> ModelThread:
    """The process's model thread (started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _one_blas_thread_for_numpy()
            _shared = ModelThread()
        return _shared
