"""Chat UI: a conversation on the left, the best matches and the pseudo-image on the right.

Per-browser-session state is plain data (the dialog state and the chat messages, cheap for
Gradio to copy); the engine with its models is shared by all sessions. The chat is rebuilt
from that state rather than read back from the Chatbot, so API clients get the same dialog
as browsers.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from dialog import DialogState
from engine.engine import Engine, TurnResult
from ui.thumbnails import thumbnail

INTRO = ("Describe the picture you are looking for. Each message adds to the description; "
         "the gallery shows the best matches so far.")
# Gradio keeps a file per image it sends; sweep every 10 min what is older than 30 min.
CACHE_SWEEP = (600, 1800)


def _reply(result: TurnResult) -> str:
    top = result.hits[0] if result.hits else None
    lines = [f"Round {result.round + 1}: searched for *{result.query}*."]
    if top:
        lines.append(f"Best match: `{Path(top.path).name}` (score {top.score:.3f}).")
    if result.notice:
        lines.append(result.notice)
    lines.append("Add more detail (colours, shapes, sizes, where things are) to sharpen it.")
    return " ".join(lines)


def _decision(result: TurnResult) -> str:
    parts = []
    lam = result.decision.get("lambda")
    if lam is not None:  # ADaFuSE's gate: how far this turn trusts the text over the image
        parts.append(f"gate λ {lam:.2f} (text {lam:.0%} · pseudo-image {1 - lam:.0%})")
    for key, value in result.decision.items():
        if key == "lambda":
            continue
        shown = ", ".join(f"{v:.2f}" for v in value) if isinstance(value, list) else f"{value:.2f}"
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return f"{result.fusion} ({'; '.join(parts)})" if parts else result.fusion


def _status(result: TurnResult, engine: Engine) -> str:
    timings = " · ".join(f"{k.replace('_', ' ')} {v:.0f} ms" for k, v in result.timings_ms.items())
    return (f"**Query:** {result.query}  \n**Fusion:** {_decision(result)} · "
            f"**Gallery:** {len(engine.index)} images · {timings}")


def empty_state() -> dict:
    return {"dialog": DialogState().to_dict(), "history": []}


def build_ui(engine: Engine, delete_cache: tuple[int, int] = CACHE_SWEEP) -> gr.Blocks:
    def send(message: str, state: dict, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        # track_tqdm: a hub pipeline's denoising bar shows in the browser while it runs.
        session = engine.session(state["dialog"])
        try:
            result = session.send(message)
        except ValueError as e:  # bad input: say so, keep the message in the box
            gr.Warning(str(e))
            return message, state["history"], gr.skip(), gr.skip(), gr.skip(), state
        history = [*state["history"], {"role": "user", "content": message.strip()},
                   {"role": "assistant", "content": _reply(result)}]
        gallery = [(thumbnail(h.path), f"#{h.rank + 1} · {h.score:.3f} · {Path(h.path).name}")
                   for h in result.hits]
        pseudo = result.pseudo_image
        if pseudo is not None and pseudo.width < 128:  # 32x32 world images: keep pixels crisp
            pseudo = pseudo.resize((128, 128), Image.NEAREST)
        state = {"dialog": session.state.to_dict(), "history": history}
        return "", history, gallery, pseudo, _status(result, engine), state

    def reset():
        return "", [], [], None, "", empty_state()

    with gr.Blocks(title="itir — interactive image search", delete_cache=delete_cache) as demo:
        gr.Markdown(f"# itir\n{INTRO}")
        state = gr.State(empty_state())
        with gr.Row():
            with gr.Column(scale=5):
                chat = gr.Chatbot(label="Dialog", height=460)
                box = gr.Textbox(placeholder="e.g. two red circles on a blue background",
                                 show_label=False, lines=1, max_lines=4, autofocus=True)
                with gr.Row():
                    send_btn = gr.Button("Search", variant="primary")
                    reset_btn = gr.Button("New search")
            with gr.Column(scale=7):
                gallery = gr.Gallery(label="Best matches", columns=4, height=460,
                                     object_fit="contain", preview=False, elem_id="results")
                with gr.Row():
                    pseudo = gr.Image(label="Pseudo-image of the query", type="pil",
                                      height=160, interactive=False, elem_id="pseudo")
                    status = gr.Markdown()
        gr.Markdown(f"<small>{engine.profile.describe()} · {len(engine.index)} images</small>",
                    elem_id="footer")
        outputs = [box, chat, gallery, pseudo, status, state]
        # One turn at a time across the app: the models, the generator's cache and the
        # scheduler's state are shared by every session and are not thread-safe.
        turn = {"concurrency_id": "turn", "concurrency_limit": 1}
        box.submit(send, [box, state], outputs, api_name="send", **turn)
        send_btn.click(send, [box, state], outputs, api_name="send_button", **turn)
        reset_btn.click(reset, None, outputs, api_name="reset")
        chat.clear(reset, None, outputs, api_name="clear")  # the Chatbot's own trash button
    return demo
