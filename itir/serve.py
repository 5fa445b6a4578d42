"""Build the app for a profile and launch it: `itir serve`, `python app.py` and the Space."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from engine.engine import Engine
from engine.factory import build_engine
from engine.profile import Profile, load_profile
from itir.errors import run_explained

if TYPE_CHECKING:
    import gradio as gr


def build_app(profile: Profile | str | None = None, overrides: tuple[str, ...] = (),
              ) -> tuple[gr.Blocks, Engine]:
    """The Gradio app and its engine; the profile defaults to $ITIR_PROFILE, else `world`."""
    if not isinstance(profile, Profile):
        profile = load_profile(profile or os.environ.get("ITIR_PROFILE", "world"), overrides)
    print(f"itir: {profile.describe()}", file=sys.stderr)
    engine = build_engine(profile)
    # Gradio is imported once the models are loaded (~5 s of imports on two cores): a
    # profile whose model is missing fails in seconds instead of after them.
    from ui.chat import build_ui

    return build_ui(engine), engine


def launch(profile: Profile | str | None = None, overrides: tuple[str, ...] = (), **kwargs):
    """Build and serve. Host and port default to Gradio's (GRADIO_SERVER_NAME/PORT)."""
    demo, _ = build_app(profile, overrides)
    import gradio as gr

    kwargs.setdefault("theme", gr.themes.Soft())
    return demo.launch(**kwargs)


def main() -> int:
    """`python app.py`: startup failures (a missing model, an index from another encoder)
    print one line, as the CLI does."""
    return run_explained(launch, prog="itir")
