"""The dialog state of one search: turns, the open question, clicks and the outcome.

It is plain data so it can live in a Gradio `State`, travel through `gradio_client`, and be
written to a session record as it is; `to_dict` / `from_dict` are exact inverses.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Literal

from dialog.query import chatir_query

MAX_MESSAGE_CHARS = 1000  # the text tower reads ~128 tokens; longer text is silently cut
ClickKind = Literal["more", "less", "found"]  # more like this / not this / this is it


@dataclass
class Turn:
    """One message of the person: an answer to the system's question, or free text."""

    answer: str
    question: str | None = None  # the question it answers, if it answers one

    @property
    def text(self) -> str:
        """The turn as ChatIR writes it: "question? answer", or the free text alone."""
        if not self.question:
            return self.answer
        return f"{self.question.rstrip().rstrip('?')}? {self.answer}"


@dataclass
class Click:
    path: str
    kind: ClickKind
    round: int


@dataclass
class Outcome:
    status: Literal["found", "abandoned"]
    round: int
    path: str | None = None


@dataclass
class DialogState:
    session_id: str = ""  # set by the first turn; names the session's record
    turns: list[Turn] = field(default_factory=list)
    question: str | None = None  # asked by the system, not answered yet
    options: list[str] = field(default_factory=list)  # answers offered for `question`
    asked: list[str] = field(default_factory=list)  # ids of the questions asked so far
    clicks: list[Click] = field(default_factory=list)
    outcome: Outcome | None = None

    @property
    def round(self) -> int:
        """ChatIR's round of the latest turn: 0 for the first message."""
        return len(self.turns) - 1

    @property
    def texts(self) -> list[str]:
        return [t.text for t in self.turns]

    def marked(self, kind: ClickKind) -> list[str]:
        """Paths marked `kind` so far, without repeats, latest mark per path winning."""
        return list(self.marked_rounds(kind))

    def marked_rounds(self, kind: ClickKind) -> dict[str, int]:
        """Path -> the round it was marked `kind` at, for the paths whose latest mark it is."""
        latest = {c.path: c for c in self.clicks}
        return {p: c.round for p, c in latest.items() if c.kind == kind}

    def query(self, reformulate=chatir_query) -> str:
        return reformulate(self.texts)

    def answers_question(self, message: str) -> bool:
        """Whether a typed message reads as the answer to the open question: one of the
        offered answers, or a few words ("blue", "near the top"). A longer message is a new
        description, and the question is left unanswered rather than glued to it."""
        if not self.question:
            return False
        words = message.lower().strip(" .!?").split()
        return " ".join(words) in [o.lower() for o in self.options] or len(words) <= 3

    def with_message(self, message: str, answer: bool | None = None) -> DialogState:
        """A copy with `message` added as the next turn. `answer`: whether it answers the
        open question (a clicked answer button says so); None decides by
        `answers_question`."""
        answer = self.answers_question(message) if answer is None else answer
        new = copy.deepcopy(self)
        new.turns.append(Turn(message, self.question if answer else None))
        new.question, new.options = None, []
        return new

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> DialogState:
        d = d or {}
        outcome = d.get("outcome")
        return cls(session_id=d.get("session_id", ""),
                   turns=[Turn(**t) for t in d.get("turns", [])],
                   question=d.get("question"), options=list(d.get("options", [])),
                   asked=list(d.get("asked", [])),
                   clicks=[Click(**c) for c in d.get("clicks", [])],
                   outcome=Outcome(**outcome) if outcome else None)


def check_message(text: str | None) -> str:
    """A person's message, stripped; empty or overlong ones are refused with what to do."""
    text = (text or "").strip()
    if not text:
        raise ValueError("Empty message: describe the picture you are looking for, "
                         "e.g. 'two red circles on a blue background'.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise ValueError(f"Message too long ({len(text)} characters; the limit is "
                         f"{MAX_MESSAGE_CHARS}). The search reads about 100 words per dialog, "
                         "so say the most distinctive things first and keep it short.")
    return text
