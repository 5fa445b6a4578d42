"""Folder -> index: find images, embed them in batches, add what is new, save atomically."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from retrieval.encoders import Encoder
from retrieval.gallery import find_images, iter_batches
from retrieval.index import VectorIndex

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class IngestReport:
    added: int = 0
    already: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"indexed {self.added} new image(s) in {self.seconds:.1f}s "
                f"({self.already} already indexed, {self.total} in the index)")
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable file(s)"
        return text


def index_folder(folder: str | Path, encoder: Encoder, index_path: str | Path,
                 rebuild: bool = False, batch_size: int = 64,
                 progress: Progress | None = None, checkpoint_seconds: float = 10.0,
                 index_kind: str = "auto", hnsw_above: int = 50_000,
                 ) -> tuple[VectorIndex, IngestReport]:
    """Embed every image under `folder` not yet in the index at `index_path`, then save.

    The index is also saved (atomically) every `checkpoint_seconds` while it grows (less
    often once a save itself takes more than a tenth of that), so an interrupted run over a
    large folder resumes where it stopped: the next run embeds only what is not in the saved
    index. An existing index built by another encoder
    raises IndexMismatchError (unless `rebuild`). `index_kind` "auto" keeps an exact flat
    index below `hnsw_above` images and turns it into an HNSW graph above.
    """
    start = time.time()
    index_path = Path(index_path)
    if index_path.exists() and not rebuild:
        index = VectorIndex.load(index_path, encoder=encoder.image_identity)
    else:
        index = VectorIndex(encoder.image_identity, encoder.dim)
    known = set(index.paths)
    found = [p.resolve() for p in find_images(folder)]
    todo = [p for p in found if str(p) not in known]
    report = IngestReport(already=len(found) - len(todo))
    bar = tqdm(total=len(todo), desc="index", unit="img", disable=not todo)
    saved, every = time.monotonic(), checkpoint_seconds
    for batch in iter_batches(todo, batch_size):
        if batch.images:
            index.add(encoder.encode_images(batch.images), batch.paths)
            if time.monotonic() - saved >= every:
                began = time.monotonic()
                index.save(index_path)
                saved = time.monotonic()
                if checkpoint_seconds:  # 0: after every batch (tests); else, as a large
                    # index takes a while to rewrite, keep saving under ~10% of the work
                    every = max(checkpoint_seconds, 10 * (saved - began))
        report.added += len(batch.paths)
        report.skipped.extend(batch.skipped)
        bar.update(len(batch.paths) + len(batch.skipped))
        if progress:
            progress(bar.n, len(todo), "embedding images")
    bar.close()
    want = index_kind if index_kind != "auto" else (
        "hnsw" if len(index) >= hnsw_above else "flat")
    changed = want != index.kind
    index.convert(want)
    if report.added or changed or not index_path.exists() or rebuild:
        index.save(index_path)
    report.total = len(index)
    report.seconds = time.time() - start
    return index, report
