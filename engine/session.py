"""One person's search: the dialog state and the turns it has run."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from dialog import Click, DialogState, Outcome, check_message

if TYPE_CHECKING:  # the engine creates sessions; at run time nothing here needs its class
    from engine.engine import Engine, TurnResult


class SearchSession:
    """Each message is a turn. Only a turn that answered becomes part of the dialog, so a
    failed turn (bad input, a crash) loses nothing that was said before."""

    def __init__(self, engine: Engine, state: DialogState | None = None, fusion=None,
                 display: bool = True):
        self.engine = engine
        self.state = state or DialogState()
        self.fusion = fusion  # None: the engine's
        self.display = display  # False: the caller draws the pseudo-image when it likes

    @property
    def query(self) -> str:
        return self.state.query(self.engine.reformulate)

    @property
    def turns(self) -> list[str]:
        return self.state.texts

    def send(self, message: str, answer: bool | None = None) -> TurnResult:
        """A message (free text, or the answer to the open question) -> a new round.
        `answer=True` when it came from an answer button; None: judged from the text."""
        if self.state.outcome is not None:
            raise ValueError("This search is over (found). Press New search to look for "
                             "another picture.")
        candidate = self.state.with_message(check_message(message), answer)
        candidate.session_id = candidate.session_id or uuid.uuid4().hex
        result = self.engine.turn(candidate, fusion=self.fusion, display=self.display)
        self._asked(candidate, result)
        self._record("turn", candidate, result)  # durable before the person sees it
        self.state = candidate
        return result

    def click(self, path: str, kind: str) -> TurnResult | None:
        """Mark a result: "more" (more like this) and "less" (not this) search again at the
        same round with the feedback; "found" (this is it) ends the search as found."""
        if kind not in ("more", "less", "found"):
            raise ValueError(f"a click is more, less or found, not {kind!r}")
        if not self.state.turns:
            raise ValueError("nothing to mark yet: describe the picture first")
        if self.state.outcome is not None:
            raise ValueError("this search is over; start a new one")
        candidate = DialogState.from_dict(self.state.to_dict())
        candidate.clicks.append(Click(path, kind, candidate.round))
        if kind == "found":
            candidate.outcome = Outcome("found", candidate.round, path)
            self._record("found", candidate, None, {"path": path, "kind": kind})
            self.state = candidate
            return None
        result = self.engine.turn(candidate, fusion=self.fusion, display=self.display)
        if candidate.question:  # an open question stays open: the click did not answer it
            result.question, result.options = candidate.question, list(candidate.options)
            result.question_id = candidate.asked[-1] if candidate.asked else None
        else:
            self._asked(candidate, result)
        self._record(kind, candidate, result, {"path": path, "kind": kind})
        self.state = candidate
        return result

    def abandon(self) -> None:
        """The person starts over without finding it: recorded, if anything was said."""
        if self.state.turns and self.state.outcome is None:
            self.state.outcome = Outcome("abandoned", self.state.round)
            self._record("abandoned", self.state, None)

    def _record(self, event: str, state: DialogState, result, click=None) -> None:
        recorder = self.engine.recorder
        if recorder is None:
            return
        start = time.perf_counter()
        recorder.write(state.session_id, recorder.turn_record(
            state.session_id, event, state, result, self.engine, click))
        if result is not None:  # the record holds the timings up to here; the reply all
            ms = (time.perf_counter() - start) * 1e3
            result.timings_ms["record"] = ms
            result.timings_ms["total"] = result.timings_ms.get("total", 0.0) + ms

    @staticmethod
    def _asked(state: DialogState, result: TurnResult) -> None:
        """The question a turn's reply asks becomes the dialog's open question."""
        state.question, state.options = result.question, list(result.options)
        if result.question_id and result.question_id not in state.asked:
            state.asked.append(result.question_id)
