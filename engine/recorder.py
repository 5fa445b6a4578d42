"""Session records: one JSON line per event, on disk before the reply is shown.

Each session appends to its own file, ITIR_HOME/sessions/<session id>.jsonl by default, so
concurrent sessions never interleave and a file is one session. A line is written, flushed
and fsynced before the turn's answer goes back to the person: a crash loses at most the
event in flight, and every line before it parses. The files read without our code:
`pandas.read_json(path, lines=True)`.

The fields follow DESIGN.md ("Session records"): session id, time, event, round, the
person's text and the question it answered, the query, the models' identities and the
generator's seed, the pseudo-image (its file beside the record, and a hash), the fusion's
decision, the top results with scores, the next question, the click, and the outcome.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.engine import TurnResult

_SESSION_ID = re.compile(r"^[0-9a-f]{8,64}$")


def pseudo_image_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Recorder:
    """Appends session events under `folder`; with `hub_dataset` (and a token), also pushes
    the folder to that Hugging Face dataset in the background."""

    def __init__(self, folder: str | Path, hub_dataset: str = "", save_images: bool = True):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.save_images = save_images
        self.notice: str | None = None
        self.scheduler = None
        if hub_dataset:
            self.scheduler = self._hub(hub_dataset)

    def _hub(self, repo_id: str):
        token = os.environ.get("HF_TOKEN")
        if not token:
            self.notice = (f"sessions are recorded to {self.folder} only: set HF_TOKEN to "
                           f"push them to the dataset {repo_id}")
            return None
        try:
            from huggingface_hub import CommitScheduler

            return CommitScheduler(repo_id=repo_id, repo_type="dataset", token=token,
                                   folder_path=self.folder, path_in_repo="sessions",
                                   every=5, private=True)
        except Exception as e:  # offline, no rights, no such repo: record locally anyway
            self.notice = (f"sessions are recorded to {self.folder} only; pushing to "
                           f"{repo_id} failed: {' '.join(str(e).split())[:200]}")
            return None

    def path(self, session_id: str) -> Path:
        if not _SESSION_ID.match(session_id):
            raise ValueError(f"bad session id {session_id!r}")
        return self.folder / f"{session_id}.jsonl"

    def write(self, session_id: str, record: dict) -> Path:
        """Append one record and make it durable before returning."""
        path = self.path(session_id)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # Someone may have moved or deleted the folder while the app runs (cleaning up old
        # sessions): the records from now on go to a new one, and the turn goes on.
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.scheduler.lock if self.scheduler is not None else None
        if lock is not None:
            lock.acquire()  # the scheduler must not upload half a line
        try:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        finally:
            if lock is not None:
                lock.release()
        return path

    def turn_record(self, session_id: str, event: str, state, result: TurnResult | None,
                    engine, click: dict | None = None) -> dict:
        """The record of one event: a turn (`event="turn"`), a click ("more", "less",
        "found"), or the end of a session ("abandoned")."""
        record = {"session": session_id, "time": time.time(), "event": event,
                  "round": state.round, "user_text": state.turns[-1].answer if state.turns
                  else None, "answered": state.turns[-1].question if state.turns else None,
                  # what was searched (cut to the encoder's window), and the whole dialog
                  "query": result.query if result else None,
                  "full_query": state.query(engine.reformulate) if state.turns else None,
                  "encoder": engine.encoder.identity,
                  "generator": getattr(engine.generator, "identity", None),
                  "generator_seed": engine.profile.generator.seed,
                  "fusion": result.fusion if result else engine.fusion.name,
                  "click": click, "outcome": (state.outcome.__dict__ if state.outcome
                                              else None)}
        if result is not None:
            record.update(
                decision=result.decision, domains=result.domains,
                hits=[{"rank": h.rank, "path": h.path, "score": round(h.score, 5)}
                      for h in result.hits],
                pseudo_image_steps=result.steps,
                question=result.question, question_id=result.question_id,
                options=result.options, notice=result.notice,
                timings_ms={k: round(v, 2) for k, v in result.timings_ms.items()})
            if result.pseudo_image is not None:
                self.path(session_id)  # a bad id is refused before anything is written
                data = pseudo_image_bytes(result.pseudo_image)
                digest = hashlib.sha256(data).hexdigest()[:16]
                record["pseudo_image"] = digest
                if self.save_images:
                    images = self.folder / session_id
                    images.mkdir(parents=True, exist_ok=True)
                    (images / f"{digest}.png").write_bytes(data)
        return record


def read_records(paths: list[str | Path]) -> list[dict]:
    """Every record in the given files and folders (folders: their *.jsonl), in file order.
    A last line cut off by a crash is skipped with a warning, not fatal."""
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    records = []
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if n == len(lines) - 1:
                    print(f"{f}: skipping a cut-off last line", file=sys.stderr)
                    continue
                raise ValueError(f"{f} line {n + 1} is not JSON: the file is damaged") from None
    return records
