"""Query reformulation: a dialog's turns -> one search text.

ChatIR's protocol (and every benchmark number in this project) joins the turns with ", ":
the round-r query is ", ".join(dialog[:r + 1]). It is the default everywhere, and the one
place that join is written. Other reformulations plug in by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass
class Fitted:
    texts: list[str]  # the turns the query is made of
    dropped: list[int]  # indices of turns left out
    shortened: bool  # the first turn was cut to fit


def _shorten(text: str, fits: Callable[[str], bool]) -> str:
    """`text` cut at a word boundary, from its end, until `fits` (at least one word)."""
    words = text.split()
    while len(words) > 1 and not fits(" ".join(words)):
        words = words[: max(len(words) * 9 // 10, 1) if len(words) > 10 else len(words) - 1]
    return " ".join(words)


def fit_turns(texts: Sequence[str], count_tokens: Callable[[str], int], budget: int,
              reformulate: Reformulation = chatir_query, reserve: int = 24) -> Fitted:
    """The turns, cut to fit the text encoder's window: the first description and as many
    of the newest turns as fit, oldest follow-ups left out first. An encoder silently
    truncates at its end, which drops exactly what the person said last; this drops the
    least recent instead, and says so. A first turn too long to leave room is shortened
    (keeping at least its first `reserve` words); a newest turn too long to fit at all is
    shortened too, rather than lost."""
    texts = list(texts)
    if not texts or count_tokens(reformulate(texts)) <= budget:
        return Fitted(texts, [], False)

    def fits(parts: list[str]) -> bool:
        return count_tokens(reformulate(parts)) <= budget

    first, kept = texts[0], []
    head = " ".join(first.split()[: max(1, min(reserve, budget // 3))])
    for i in range(len(texts) - 1, 0, -1):  # newest first
        if not fits([head, *[texts[j] for j in sorted([*kept, i])]]):
            break
        kept.append(i)
    tail = [texts[j] for j in sorted(kept)]
    shortened = False
    if len(texts) > 1 and not kept:  # the newest message alone is too long: keep its start
        tail, kept, shortened = [_shorten(texts[-1], lambda t: fits([head, t]))], [
            len(texts) - 1], True
    if not fits([first, *tail]):
        first, shortened = _shorten(first, lambda t: fits([t, *tail])), True
    dropped = [j for j in range(1, len(texts)) if j not in kept]
    return Fitted([first, *tail], dropped, shortened)


MAX_CLAUSES = 32


def split_clauses(text: str) -> list[str]:
    """A query cut at commas, semicolons, full stops and line breaks, blanks dropped.

    ChatIR queries are turns joined by ", ", so the clauses are the caption's parts and the
    "question? answer" pairs (a question and its answer never part). Each clause is short,
    and the same clause recurs across dialogs, so a text tower can read clauses one by one,
    cache them, and stay within its token window however long the dialog grows. Only the
    first MAX_CLAUSES are kept (a dialog of ten rounds has about fifteen).
    """
    parts = [p for p in (p.strip() for p in re.split(r"[,;.\n]+", text)) if p]
    if len(parts) > MAX_CLAUSES:  # keep the opening description and the newest answers
        parts = parts[:1] + parts[len(parts) - MAX_CLAUSES + 1:]
    return parts
