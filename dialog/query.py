"""Query reformulation: a dialog's turns -> one search text.

ChatIR's protocol (and every benchmark number in this project) joins the turns with ", ":
the round-r query is ", ".join(dialog[:r + 1]). It is the default everywhere, and the one
place that join is written. Other reformulations plug in by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

Reformulation = Callable[[Sequence[str]], str]


def chatir_query(texts: Sequence[str]) -> str:
    """The caption and the answered questions so far, as ChatIR concatenates them."""
    if isinstance(texts, str):
        raise TypeError("chatir_query takes the list of turn texts, not one string")
    return ", ".join(texts)


def latest_query(texts: Sequence[str]) -> str:
    """Only the last turn: what a one-shot search box would see (an ablation)."""
    return texts[-1] if texts else ""


REFORMULATIONS: dict[str, Reformulation] = {"chatir": chatir_query, "latest": latest_query}


def get_reformulation(name: str) -> Reformulation:
    if name not in REFORMULATIONS:
        raise ValueError(f"unknown reformulation {name!r}; expected one of "
                         f"{sorted(REFORMULATIONS)}")
    return REFORMULATIONS[name]


MAX_CLAUSES = 32


def split_clauses(text: str) -> list[str]:
    """A query cut at commas, semicolons, full stops and line breaks, blanks dropped.

    ChatIR queries are turns joined by ", ", so the clauses are the caption's parts and the
    "question? answer" pairs (a question and its answer never part). Each clause is short,
    and the same clause recurs across dialogs, so a text tower can read clauses one by one,
    cache them, and stay within its token window however long the dialog grows. Only the
    first MAX_CLAUSES are kept (a dialog of ten rounds has about fifteen).
    """
    parts = [p.strip() for p in re.split(r"[,;.\n]+", text)]
    return [p for p in parts if p][:MAX_CLAUSES]
