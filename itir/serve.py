"""Build the app for a profile and launch it: `itir serve`, `python app.py` and the Space."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from typing import TYPE_CHECKING

from engine.preflight import check_models_reachable, draws_pseudo_images
from engine.profile import Profile, load_profile
from itir.errors import run_explained

if TYPE_CHECKING:
    import gradio as gr

    from engine.engine import Engine


def build_app(profile: Profile | str | None = None, overrides: tuple[str, ...] = (),
              ) -> tuple[gr.Blocks, Engine]:
    """The Gradio app and its engine; the profile defaults to $ITIR_PROFILE, else `world`."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile or os.environ.get("ITIR_PROFILE", "world"), overrides)
    # Torch, the model libraries and Gradio take seconds to import on two cores: a hub model
    # that cannot be had is refused before them, the engine's models load before Gradio.
    check_models_reachable(profile, generator=draws_pseudo_images(profile))
    print(f"itir: {profile.describe()}", file=sys.stderr)
    from engine.factory import build_engine

    engine = build_engine(profile)
    print(f"itir: running {engine.describe()}", file=sys.stderr)
    from ui.chat import build_ui

    return build_ui(engine), engine


def launch(profile: Profile | str | None = None, overrides: tuple[str, ...] = (), **kwargs):
    """Build and serve. Host and port default to Gradio's (GRADIO_SERVER_NAME/PORT)."""
    demo, engine = build_app(profile, overrides)
    import gradio as gr

    if engine.profile.warm_up:
        engine.warm_up(engine.profile.concurrent_turns)
        # Gradio asks matplotlib for its backend around every event, which imports pyplot
        # on the first (~0.3 s of the first person's first turn): done now, if installed.
        with contextlib.suppress(ImportError):
            import matplotlib

            matplotlib.get_backend()

    # Everything loaded so far (torch, the models, Gradio: millions of objects) lives as
    # long as the app. Frozen, the collector stops walking it: a full collection over it
    # took 80-320 ms, with every thread stopped, several times a minute under load
    # (docs/BENCHMARKS.md, "Concurrent sessions").
    gc.collect()
    gc.freeze()

    kwargs.setdefault("theme", gr.themes.Soft())
    return demo.launch(**kwargs)


def main() -> int:
    """`python app.py`: startup failures (a missing model, an index from another encoder)
    print one line, as the CLI does."""
    return run_explained(launch, prog="itir")
