"""itir app: build the engine for a profile and launch the chat UI (also the Space entry).

    python app.py                     # offline world profile
    ITIR_PROFILE=clip-sdturbo python app.py
"""

from __future__ import annotations

import os

import gradio as gr

from itir.profile import Profile, load_profile
from retrieval.engine import Engine
from ui.chat import allowed_paths, build_ui


def build_app(profile: Profile | str | None = None) -> tuple[gr.Blocks, Engine]:
    if not isinstance(profile, Profile):
        profile = load_profile(profile or os.environ.get("ITIR_PROFILE", "world"))
    engine = Engine.from_profile(profile)
    return build_ui(engine), engine


def launch(profile: Profile | str | None = None, **kwargs):
    demo, engine = build_app(profile)
    kwargs.setdefault("allowed_paths", allowed_paths(engine))
    kwargs.setdefault("theme", gr.themes.Soft())
    return demo.launch(**kwargs)


if __name__ == "__main__":
    launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
