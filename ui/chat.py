"""Chat UI: a conversation on the left, the best matches and the pseudo-image on the right.

Per-browser-session state is plain data (the turns and the chat messages, cheap for Gradio
to copy); the engine with its models is shared by all sessions. The chat is rebuilt from that
state rather than read back from the Chatbot, so API clients get the same dialog as browsers.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from PIL import Image

from retrieval.engine import Engine, TurnResult

INTRO = ("Describe the picture you are looking for. Each message adds to the description; "
         "the gallery shows the best matches so far.")


def _reply(result: TurnResult) -> str:
    top = result.hits[0] if result.hits else None
    lines = [f"Round {result.round + 1}: searched for *{result.query}*."]
    if top:
        lines.append(f"Best match: `{Path(top.path).name}` (score {top.score:.3f}).")
    if result.notice:
        lines.append(result.notice)
    lines.append("Add more detail (colours, shapes, sizes, where things are) to sharpen it.")
    return " ".join(lines)


def _status(result: TurnResult, engine: Engine) -> str:
    t = result.timings_ms
    parts = [f"{k.replace('_', ' ')} {v:.0f} ms" for k, v in t.items()]
    return (f"**Query:** {result.query}  \n**Fusion:** {result.fusion} · "
            f"**Gallery:** {len(engine.index)} images · " + " · ".join(parts))


def empty_state() -> dict:
    return {"turns": [], "history": []}


def build_ui(engine: Engine) -> gr.Blocks:
    def send(message: str, state: dict, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        # track_tqdm: a hub pipeline's denoising bar shows in the browser while it runs.
        session = engine.session()
        session.turns = list(state["turns"])
        try:
            result = session.send(message)
        except ValueError as e:  # bad input: say so, keep the message in the box
            gr.Warning(str(e))
            return message, state["history"], gr.skip(), gr.skip(), gr.skip(), state
        history = [*state["history"], {"role": "user", "content": message.strip()},
                   {"role": "assistant", "content": _reply(result)}]
        gallery = [(h.path, f"#{h.rank + 1} · {h.score:.3f} · {Path(h.path).name}")
                   for h in result.hits]
        pseudo = result.pseudo_image
        if pseudo is not None and pseudo.width < 128:  # 32x32 world images: keep pixels crisp
            pseudo = pseudo.resize((128, 128), Image.NEAREST)
        state = {"turns": session.turns, "history": history}
        return "", history, gallery, pseudo, _status(result, engine), state

    def reset():
        return "", [], [], None, "", empty_state()

    with gr.Blocks(title="itir — interactive image search") as demo:
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
        outputs = [box, chat, gallery, pseudo, status, state]
        box.submit(send, [box, state], outputs, api_name="send")
        send_btn.click(send, [box, state], outputs, api_name="send_button")
        reset_btn.click(reset, None, outputs, api_name="reset")
        chat.clear(reset, None, outputs, api_name="clear")  # the Chatbot's own trash button
    return demo


def allowed_paths(engine: Engine) -> list[str]:
    """Folders Gradio may serve images from: those holding the indexed gallery."""
    roots = {str(Path(p).parent) for p in engine.index.paths}
    return sorted(roots) if len(roots) < 64 else [str(engine.profile.gallery_folder)]
