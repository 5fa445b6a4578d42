"""The model thread: calls run there, concurrent batchable calls are merged, errors reach
their callers; and a session's UI events run one at a time (SessionLocks)."""

import contextvars
import threading
import time

import pytest

from engine.model_thread import BACKGROUND, HEAVY, ModelThread
from ui.chat import SessionLocks


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.001)


class Busy:
    """Holds the model thread busy inside `with`; `queue(call)` starts a caller thread and
    waits until its call is queued, so calls queue in the order they are given."""

    def __init__(self, models: ModelThread):
        self.models, self.release, self.threads, self.results = models, threading.Event(), [], []

    def __enter__(self):
        running = threading.Event()
        self._start(lambda: self.models.run(lambda: (running.set(), self.release.wait())))
        running.wait(10)
        return self

    def queue(self, call) -> None:
        waiting = len(self.models._calls)
        self._start(call)
        wait_until(lambda: len(self.models._calls) == waiting + 1)

    def _start(self, call) -> None:
        i = len(self.results)
        self.results.append(None)

        def run():
            try:
                self.results[i] = call()
            except Exception as e:  # noqa: BLE001  (the test looks at it)
                self.results[i] = e
        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def __exit__(self, *exc):
        self.release.set()
        for t in self.threads:
            t.join(10)


def test_calls_run_on_the_model_thread_and_nested_calls_run_inline():
    models = ModelThread()
    where = models.run(threading.current_thread)
    assert where is models._thread and where is not threading.current_thread()
    # A model call that makes another (build_engine loading models) must not deadlock.
    assert models.run(lambda: models.run(lambda: 41) + 1) == 42
    assert models.run(lambda: models.batched("k", lambda xs: [x * 2 for x in xs], [3], 4)) \
        == [6]
    assert models.batched("k", lambda xs: [x * 2 for x in xs], [], 4) == []


def test_concurrent_calls_with_one_key_become_one_batch_and_each_gets_its_own_results():
    models, seen = ModelThread(), []

    def double(items):
        seen.append(list(items))
        return [x * 2 for x in items]
    with Busy(models) as busy:
        busy.queue(lambda: models.batched("double", double, [1, 2], 8))
        busy.queue(lambda: models.batched("double", double, [3], 8))
        busy.queue(lambda: models.batched("other", double, [10], 8))  # another key
        busy.queue(lambda: models.batched("double", double, [4, 5, 6, 7, 8, 9], 8))  # > 8
    assert busy.results[1:] == [[2, 4], [6], [20], [8, 10, 12, 14, 16, 18]]
    assert seen == [[1, 2, 3], [10], [4, 5, 6, 7, 8, 9]]


def test_a_failing_batch_is_run_again_call_by_call_so_only_the_bad_call_fails():
    models, seen = ModelThread(), []

    def strict(items):
        seen.append(list(items))
        if "bad" in items:
            raise ValueError("cannot draw 'bad'")
        return [x.upper() for x in items]
    with Busy(models) as busy:
        busy.queue(lambda: models.batched("draw", strict, ["a"], 4))
        busy.queue(lambda: models.batched("draw", strict, ["bad"], 4))
        busy.queue(lambda: models.batched("draw", strict, ["c"], 4))
    assert busy.results[1] == ["A"] and busy.results[3] == ["C"]
    assert isinstance(busy.results[2], ValueError)
    assert seen == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]
    with pytest.raises(RuntimeError, match="2 results for 1 items"):
        models.batched("bad", lambda xs: [0, 0], [1], 4)
    assert models.run(lambda: "still serving") == "still serving"


def test_light_calls_go_before_heavy_ones_and_background_calls_go_last():
    models, order = ModelThread(), []

    def log(items):
        order.extend(items)
        return items
    with Busy(models) as busy:
        busy.queue(lambda: models.batched("draw", log, ["shown"], 4, BACKGROUND))
        busy.queue(lambda: models.batched("draw", log, ["drawing a"], 4, HEAVY))
        busy.queue(lambda: models.run(order.append, "search"))
        busy.queue(lambda: models.batched("text", log, ["text b"], 4))
        busy.queue(lambda: models.batched("draw", log, ["drawing b"], 4, HEAVY))
    # A turn's quick steps do not wait behind other sessions' drawings; the drawings still
    # go in one batch, oldest first; the picture only to be shown waits for all of them.
    assert order == ["search", "text b", "drawing a", "drawing b", "shown"]


def test_a_drawing_that_expects_company_waits_for_it_but_never_past_its_gather_time():
    models, seen = ModelThread(), []

    def log(items):
        seen.append(list(items))
        return items
    # Three turns expected: the first waits, the others join it as they come.
    first = threading.Thread(target=lambda: models.batched("draw", log, ["a"], 8, HEAVY, 3,
                                                           5.0))
    first.start()
    wait_until(lambda: len(models._calls) == 1)
    time.sleep(0.05)
    assert seen == []  # held: two more are expected, and its 5 s are not up
    assert models.run(lambda: "a quick call goes meanwhile") == "a quick call goes meanwhile"
    others = [threading.Thread(target=lambda q=q: models.batched("draw", log, [q], 8, HEAVY))
              for q in ("b", "c")]
    for thread in others:
        thread.start()
    for thread in (*others, first):
        thread.join(10)
    assert seen == [["a", "b", "c"]]
    # Company that never comes costs at most the gather time, counted from the call's arrival.
    began = time.monotonic()
    assert models.batched("draw", log, ["alone"], 8, HEAVY, 4, 0.1) == ["alone"]
    assert 0.09 <= time.monotonic() - began < 2
    began = time.monotonic()
    assert models.batched("draw", log, ["none expected"], 8, HEAVY, 1, 5.0) == ["none expected"]
    assert time.monotonic() - began < 2


def test_the_turn_load_is_the_peak_of_turns_in_flight_over_its_window():
    from engine.load import TurnLoad

    load = TurnLoad(window_s=60)  # "lately" spans the test, however slow the machine
    assert load.peak() == 0
    with load.turn(), load.turn():
        with load.turn():
            assert load.peak() == 3
        assert load.peak() == 3  # a turn that just ended still counts: its session is busy
    assert load.peak() == 3
    load.window_s = 0.0
    assert load.peak() == 0 and not load._seen  # forgotten, and not kept
    with load.turn():
        assert load.peak() == 1


def test_a_call_runs_in_its_callers_context():
    who = contextvars.ContextVar("who", default="nobody")
    models = ModelThread()
    who.set("session a")
    assert models.run(who.get) == "session a"
    assert models.batched("who", lambda xs: [who.get() for _ in xs], [1, 2], 4) == \
        ["session a"] * 2


def test_a_sessions_events_wait_for_each_other_and_see_what_the_one_before_wrote():
    locks, state = SessionLocks(), {"turns": []}
    other = {"turns": []}
    inside, release = threading.Event(), threading.Event()

    def first_event():
        inside.set()
        release.wait(10)
        return ("reply 1", {"turns": [*state["turns"], "first"]})
    first = threading.Thread(target=lambda: locks.exclusive(state, first_event), daemon=True)
    first.start()
    inside.wait(10)
    # Another session is not held up by this one.
    assert locks.exclusive(other, lambda: {"turns": ["elsewhere"]}) is other
    second = threading.Thread(target=lambda: locks.exclusive(
        state, lambda: ("reply 2", {"turns": [*state["turns"], "second"]})), daemon=True)
    second.start()
    time.sleep(0.05)
    assert state["turns"] == []  # the second event is waiting, not racing
    release.set()
    first.join(10)
    second.join(10)
    assert state["turns"] == ["first", "second"] and other["turns"] == ["elsewhere"]
    assert locks._locks == {}  # nothing kept once no event holds the session
