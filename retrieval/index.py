"""The vector index: FAISS inner product over L2-normalised vectors, plus its metadata.

Index and metadata live in one file written to a temporary name and renamed into place,
so a crash mid-write leaves the previous index intact, never half of a new one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import numpy as np

FORMAT = 1


class IndexMismatchError(ValueError):
    """The index was built with a different encoder than the one asked to search it."""


@dataclass
class IndexMeta:
    encoder: str
    dim: int
    paths: list[str] = field(default_factory=list)
    built: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    format: int = FORMAT
    kind: str = "flat"  # flat | hnsw


INDEX_KINDS = ("flat", "hnsw")
HNSW_NEIGHBOURS = 32  # graph degree: memory vs recall
HNSW_EF_SEARCH = 128  # candidates per query: recall@10 vs flat 1.000 at 10k (docs/BENCHMARKS.md)


def _make(kind: str, dim: int) -> faiss.Index:
    """Exact inner product (flat), or an HNSW graph: approximate, but its search time grows
    with log N rather than N, for galleries where a flat scan per turn gets slow."""
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        _tune(index)
        return index
    raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")


def _tune(index: faiss.Index) -> None:
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = HNSW_EF_SEARCH  # not serialised: set on every load


class VectorIndex:
    def __init__(self, encoder: str, dim: int, kind: str = "flat"):
        self.faiss = _make(kind, dim)
        self.meta = IndexMeta(encoder=encoder, dim=dim, kind=kind)

    @property
    def kind(self) -> str:
        return self.meta.kind

    def convert(self, kind: str) -> None:
        """Rebuild as another kind from the stored vectors (ids and paths unchanged)."""
        if kind != self.kind:
            index = _make(kind, self.meta.dim)
            if len(self):
                index.add(self.vectors())
            self.faiss, self.meta.kind = index, kind

    def __len__(self) -> int:
        return self.faiss.ntotal

    @property
    def paths(self) -> list[str]:
        return self.meta.paths

    def add(self, vectors: np.ndarray, paths: list[str]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.meta.dim:
            raise ValueError(f"expected vectors [N, {self.meta.dim}], got {vectors.shape}")
        if len(vectors) != len(paths):
            raise ValueError(f"{len(vectors)} vectors for {len(paths)} paths")
        self.faiss.add(vectors)
        self.meta.paths.extend(paths)
        self.meta.updated = time.time()

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k'], ids [Q, k']) with k' = min(k, len(self)), best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self.faiss.search(queries, k)

    def vectors_of(self, ids: list[int]) -> np.ndarray:
        """The stored vectors of `ids` [len(ids), D] (feedback and questions read them)."""
        if not ids:
            return np.zeros((0, self.meta.dim), np.float32)
        return np.stack([self.faiss.reconstruct(int(i)) for i in ids])

    def vectors(self) -> np.ndarray:
        """All stored vectors, in id order (for exact scoring of every gallery image)."""
        return self.faiss.reconstruct_n(0, len(self))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = faiss.serialize_index(self.faiss)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, index=blob, meta=np.frombuffer(
                    json.dumps(asdict(self.meta)).encode(), dtype=np.uint8))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def read_meta(path: str | Path) -> IndexMeta:
        """The metadata alone (paths, encoder, kind), without reading the vectors."""
        return VectorIndex._read(path, vectors=False)[0]

    @staticmethod
    def _read(path: str | Path, vectors: bool = True) -> tuple[IndexMeta, faiss.Index | None]:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no index at {path}; build one with `itir index FOLDER`")
        try:
            with np.load(path) as data:  # an .npz reads each array only when asked for
                meta = IndexMeta(**json.loads(bytes(data["meta"]).decode()))
                index = faiss.deserialize_index(data["index"]) if vectors else None
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a readable itir index ({e}); rebuild it with "
                             "`itir index FOLDER --rebuild`") from e
        return meta, index

    @classmethod
    def load(cls, path: str | Path, encoder: str | None = None) -> VectorIndex:
        """Load; with `encoder`, refuse an index that another encoder built."""
        meta, index = cls._read(path)
        if encoder is not None and meta.encoder != encoder:
            raise IndexMismatchError(
                f"the index at {path} was built with encoder {meta.encoder!r} (dim {meta.dim}) "
                f"but the current profile uses {encoder!r}; rebuild it with "
                "`itir index FOLDER --rebuild` or switch back to the profile that built it")
        _tune(index)
        out = cls.__new__(cls)
        out.meta, out.faiss = meta, index
        return out


