"""Where a profile's image domains live: one adapter folder per domain and the router.

Layout of the folder (ITIR_HOME/domains/<profile> by default):
    router.json        prototypes of the base domain and of every added domain
    NAME/              the domain's adapter (`save_pretrained`: config.json, model.safetensors)
    NAME/domain.json   what `itir domain list` shows: images, steps, held-out numbers

Removing a domain deletes its folder and its prototype and touches nothing else.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from retrieval.adapters import DomainAdapter
from retrieval.routing import Router
from retrieval.spec import DomainSpec
from retrieval.world_encoder import ImageTower

ROUTER = "router.json"
INFO = "domain.json"
BASE = "base"  # the prototype of what the base tower was trained on; it has no adapter
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")


def check_name(name: str) -> str:
    """A domain name is a folder name: short, lowercase, no path characters."""
    if not _NAME.fullmatch(name) or name == BASE:
        raise ValueError(f"domain name {name!r}: use 1-40 lowercase letters, digits, '-' or "
                         f"'_' (and not {BASE!r}, which names the base encoder's own images)")
    return name


class DomainStore:
    """A folder of domains: adapters by name and the router that knows their prototypes."""

    @classmethod
    def of(cls, spec: DomainSpec) -> DomainStore:
        return cls(spec.folder, spec.temperature, spec.keep)

    def __init__(self, folder: str | Path, temperature: float | None = None,
                 keep: float | None = None):
        self.folder = Path(folder)
        self.temperature, self.keep = temperature, keep  # the profile's, over the stored ones

    def router(self) -> Router | None:
        path = self.folder / ROUTER
        if not path.exists():
            return None
        router = Router.load(path)
        router.temperature = self.temperature if self.temperature is not None \
            else router.temperature
        router.keep = self.keep if self.keep is not None else router.keep
        return router

    @property
    def names(self) -> list[str]:
        """Added domains in the order they were added (the router's order)."""
        router = self.router()
        return [n for n in router.names if n != BASE] if router else []

    def info(self, name: str) -> dict:
        path = self.folder / name / INFO
        return json.loads(path.read_text()) if path.exists() else {}

    def adapters(self, tower: ImageTower, base: str | None = None) -> list[DomainAdapter]:
        """Every added domain's adapter for `tower` (with `base`, the tower's identity, an
        adapter trained on another tower is refused)."""
        out = []
        for n in self.names:
            try:
                out.append(DomainAdapter.load(self.folder / n, tower, base).eval())
            except (OSError, ValueError) as e:
                raise ValueError(f"image domain {n!r} in {self.folder} cannot be used ({e}); "
                                 f"remove it with `itir domain remove {n}` (or delete "
                                 f"{self.folder} to drop every domain)") from None
        return out

    def add(self, name: str, adapter: DomainAdapter, router: Router, info: dict) -> None:
        """Save a trained domain: its adapter and info first, the router (which makes it
        live) last, so a crash in between leaves the store as it was."""
        target, staging = self.folder / name, self.folder / f".{name}.new"
        shutil.rmtree(staging, ignore_errors=True)
        adapter.save_pretrained(staging)
        (staging / INFO).write_text(json.dumps(info, indent=1))
        if target.exists():  # a domain added again replaces the earlier one
            shutil.rmtree(target)
        staging.rename(target)
        self._save_router(router)

    def update_info(self, name: str, **fields) -> None:
        path = self.folder / name / INFO
        path.write_text(json.dumps(self.info(name) | fields, indent=1))

    def remove(self, name: str) -> None:
        router = self.router()
        if router is None or name not in router.names or name == BASE:
            raise ValueError(f"no domain {name!r} in {self.folder}; `itir domain list` shows "
                           "the domains there are")
        router.remove(name)
        self._save_router(router)
        shutil.rmtree(self.folder / name, ignore_errors=True)

    def _save_router(self, router: Router) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / (ROUTER + ".tmp")
        router.save(tmp)
        tmp.replace(self.folder / ROUTER)
