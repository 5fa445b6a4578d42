"""Recorded sessions as benchmarks: `itir replay` and `itir export`.

From the records alone (engine/recorder.py): how many sessions found their picture by each
round, and for found sessions (the found image is the target) the target's rank in what was
shown. With the engine, every found session's queries are searched again under each fusion
(counterfactual): the same dialog, other fusions, full-gallery ranks, ChatIR's metrics.
`export` writes found sessions as a ChatIR dialog file, so real use becomes a test set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dialog.state import Turn
from engine.recorder import read_records
from evaluation.metrics import cumulative_hits


@dataclass
class Session:
    id: str
    turns: list[dict] = field(default_factory=list)  # "turn" records, in order
    events: list[dict] = field(default_factory=list)  # every record
    outcome: dict | None = None

    @property
    def texts(self) -> list[str]:
        return [Turn(r["user_text"], r.get("answered")).text for r in self.turns]

    @property
    def found(self) -> tuple[int, str] | None:
        if self.outcome and self.outcome.get("status") == "found":
            return self.outcome["round"], self.outcome["path"]
        return None


def sessions_of(paths: list[str | Path]) -> list[Session]:
    by_id: dict[str, Session] = {}
    for record in read_records(paths):
        session = by_id.setdefault(record["session"], Session(record["session"]))
        session.events.append(record)
        if record["event"] == "turn":
            session.turns.append(record)
        if record.get("outcome"):
            session.outcome = record["outcome"]
    return list(by_id.values())


def shown_ranks(session: Session, rounds: int) -> np.ndarray:
    """[rounds + 1] 0-based rank of the found image among the results shown at each round
    (its last search of the round), a large number where it was not shown."""
    target = session.found[1]
    last: dict[int, list[str]] = {}
    for e in session.events:
        if e.get("hits"):
            last[e["round"]] = [h["path"] for h in e["hits"]]
    out = np.full(rounds + 1, 10**9, np.int64)
    for r, paths in last.items():
        if r <= rounds and target in paths:
            out[r] = paths.index(target)
    return np.minimum.accumulate(out)  # a session that ended keeps its best


def summary(sessions: list[Session], rounds: int = 10) -> dict:
    found = [s for s in sessions if s.found]
    out = {"sessions": len(sessions), "found": len(found),
           "found_by_round": [round(100 * sum(s.found[0] <= r for s in found)
                                    / max(len(sessions), 1), 2) for r in range(rounds + 1)]}
    if found:
        ranks = np.stack([shown_ranks(s, rounds) for s in found])
        out["found_sessions_shown"] = {f"hits@{k}": cumulative_hits(ranks, k).round(2).tolist()
                                       for k in (1, 5, 10)}
    return out


def counterfactual(sessions: list[Session], engine, methods: dict, rounds: int = 10) -> dict:
    """Full-gallery target ranks of every found session's recorded queries under each
    fusion (the recorded pseudo-images where their files are kept, else drawn again)."""
    from PIL import Image

    from evaluation.chatir import summarise
    from fusion import TextOnly

    methods = {"text": TextOnly(), **methods}  # the reference of the degradation rate
    if engine.generator is None and any(m.uses_image for m in methods.values()):
        raise ValueError("replaying fusions that use the pseudo-image needs the profile's "
                         "generator; use --methods text or a profile with one")
    ids = {p: i for i, p in enumerate(engine.index.paths)}
    found = [s for s in sessions if s.found and s.found[1] in ids]
    if not found:
        return {}
    gallery = engine.index.vectors()
    ranks = {name: np.full((len(found), rounds + 1), 10**9, np.int64) for name in methods}
    folder = engine.recorder.folder if engine.recorder is not None else None
    for n, s in enumerate(found):
        target = ids[s.found[1]]
        for record in s.turns[: rounds + 1]:
            r = record["round"]
            query = record.get("query") or record.get("full_query")
            t = engine.encoder.encode_texts([query])
            g = None
            if any(getattr(m, "uses_image", False) for m in methods.values()):
                kept = folder / s.id / f"{record.get('pseudo_image')}.png" if folder else None
                # 0 steps: a busy CPU searched that turn with the text alone (`[generator]
                # cpu_step_budget`); its fusions replay with what a quiet app would draw.
                image = (Image.open(kept).convert("RGB") if kept and kept.is_file() else
                         engine.generator.generate([query],
                                                   seed=record.get("generator_seed", 0),
                                                   steps=record.get("pseudo_image_steps")
                                                   or None)[0])
                g = engine.encoder.encode_images([image])
            for name, fusion in methods.items():
                q = fusion(t, g if fusion.uses_image else None, np.array([r])).query[0]
                scores = gallery @ q
                ranks[name][n, r] = int((scores > scores[target]).sum())
        for name in methods:  # rounds after the session ended keep the last rank
            ranks[name][n] = np.minimum.accumulate(ranks[name][n])
    text = ranks["text"]
    return {"sessions": len(found), "methods": {name: summarise(r, text)
                                                for name, r in ranks.items()}}


def export_chatir(sessions: list[Session], out: str | Path, rounds: int = 10) -> tuple[int, int]:
    """Found sessions with at least `rounds + 1` turns, cut to that length, as ChatIR's
    [{"img", "dialog"}]; returns (written, left out)."""
    rows = [{"img": s.found[1], "dialog": s.texts[: rounds + 1]}
            for s in sessions if s.found and len(s.turns) >= rounds + 1]
    Path(out).write_text(json.dumps(rows, indent=1))
    return len(rows), sum(bool(s.found) for s in sessions) - len(rows)
