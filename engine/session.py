"""One person's search: the dialog state and the turns it has run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dialog import DialogState, check_message

if TYPE_CHECKING:  # the engine creates sessions; at run time nothing here needs its class
    from engine.engine import Engine, TurnResult


class SearchSession:
    """Each message is a turn. Only a turn that answered becomes part of the dialog, so a
    failed turn (bad input, a crash) loses nothing that was said before."""

    def __init__(self, engine: Engine, state: DialogState | None = None):
        self.engine = engine
        self.state = state or DialogState()

    @property
    def query(self) -> str:
        return self.state.query(self.engine.reformulate)

    @property
    def turns(self) -> list[str]:
        return self.state.texts

    def send(self, message: str) -> TurnResult:
        candidate = self.state.with_message(check_message(message))
        result = self.engine.turn(candidate)
        self.state = candidate
        return result
