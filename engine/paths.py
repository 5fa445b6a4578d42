"""Where itir finds what it ships and keeps what it builds.

Shipped weights (`assets/`) and profiles (`profiles/`) are package data, found through the
installed package, so every command works from any directory. What itir builds (rendered
galleries, indexes, training corpora) lives in one folder: `ITIR_HOME` or ~/.cache/itir.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def assets_dir() -> Path:
    return Path(str(files("assets")))


def profiles_dir() -> Path:
    return Path(str(files("profiles")))


def home() -> Path:
    return Path(os.environ.get("ITIR_HOME", Path.home() / ".cache" / "itir")).expanduser()


def cache_dir() -> Path:
    """Training corpora (rendered images + cached text-tower states)."""
    return home() / "corpora"
