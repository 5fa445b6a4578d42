"""Where itir keeps what it builds: one folder, `ITIR_HOME` or ~/.cache/itir."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"


def home() -> Path:
    return Path(os.environ.get("ITIR_HOME", Path.home() / ".cache" / "itir"))


def cache_dir() -> Path:
    """Training corpora (rendered images + cached text-tower states)."""
    return home() / "corpora"
