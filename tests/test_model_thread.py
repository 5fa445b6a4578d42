"""The model thread: calls run there, concurrent batchable calls are merged, errors reach
their callers."""

import threading
import time

import pytest

from engine.model_thread import ModelThread


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.001)


def hold(models: ModelThread, release: threading.Event) -> list[threading.Thread]:
    """Keep the model thread busy until `release` is set, so the calls after queue up."""
    running = threading.Event()
    threads, _ = in_threads(lambda: models.run(lambda: (running.set(), release.wait())))
    running.wait(10)
    return threads


def in_threads(*calls):
    """Start each call on a thread of its own; returns (threads, results by position)."""
    results = [None] * len(calls)

    def run(i, call):
        results[i] = call()
    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    return threads, results


def test_calls_run_on_the_model_thread_and_nested_calls_run_inline():
    models = ModelThread()
    where = models.run(threading.current_thread)
    assert where is models._thread and where is not threading.current_thread()
    # A model call that makes another (build_engine loading models) must not deadlock.
    assert models.run(lambda: models.run(lambda: 41) + 1) == 42
    assert models.batched("k", lambda xs: [x * 2 for x in xs], [], 4) == []


def test_concurrent_calls_with_one_key_become_one_batch_and_each_gets_its_own_results():
    models = ModelThread()
    release = threading.Event()
    seen = []

    def double(items):
        seen.append(list(items))
        return [x * 2 for x in items]
    blocker = hold(models, release)
    threads, results = in_threads(
        lambda: models.batched("double", double, [1, 2], 8),
        lambda: models.batched("double", double, [3], 8),
        lambda: models.batched("other", double, [10], 8),  # another key: its own batch
        lambda: models.batched("double", double, [4, 5, 6, 7, 8, 9], 8))  # would pass 8
    wait_until(lambda: len(models._calls) == 4)
    release.set()
    for t in [*blocker, *threads]:
        t.join(10)
    assert results == [[2, 4], [6], [20], [8, 10, 12, 14, 16, 18]]
    assert seen == [[1, 2, 3], [10], [4, 5, 6, 7, 8, 9]]
    assert list(models.batches) == [3, 1, 6]


def test_an_error_reaches_every_caller_of_its_batch_and_the_thread_goes_on():
    models = ModelThread()
    release = threading.Event()

    def fail(items):
        raise ValueError(f"cannot do {items}")
    blocker = hold(models, release)

    def call(x):
        try:
            return models.batched("fail", fail, [x], 4)
        except ValueError as e:
            return str(e)
    threads, results = in_threads(lambda: call(1), lambda: call(2))
    wait_until(lambda: len(models._calls) == 2)
    release.set()
    for t in [*blocker, *threads]:
        t.join(10)
    assert results == ["cannot do [1, 2]"] * 2
    with pytest.raises(RuntimeError, match="2 results for 1 items"):
        models.batched("bad", lambda xs: [0, 0], [1], 4)
    assert models.run(lambda: "still serving") == "still serving"


def test_a_background_call_waits_while_others_wait():
    models = ModelThread()
    release, order = threading.Event(), []
    blocker = hold(models, release)
    first, _ = in_threads(lambda: models.batched("draw", lambda xs: order.extend(xs) or xs,
                                                 ["shown"], 4, background=True))
    wait_until(lambda: len(models._calls) == 1)
    second, _ = in_threads(lambda: models.run(order.append, "search"))
    wait_until(lambda: len(models._calls) == 2)
    release.set()
    for t in [*blocker, *first, *second]:
        t.join(10)
    assert order == ["search", "shown"]


def test_a_call_runs_in_its_callers_context():
    import contextvars
    who = contextvars.ContextVar("who", default="nobody")
    models = ModelThread()
    who.set("session a")
    assert models.run(who.get) == "session a"
    assert models.batched("who", lambda xs: [who.get() for _ in xs], [1, 2], 4) == \
        ["session a"] * 2
