"""Chat UI: a conversation on the left, the best matches and the pseudo-image on the right.

Per-browser-session state is just the list of turns (plain data, cheap for Gradio to copy);
the engine with its models is shared by all sessions.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

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


def build_ui(engine: Engine) -> gr.Blocks:
    def send(message: str, history: list, turns: list[str]):
        session = engine.session()
        session.turns = list(turns)
        try:
            result = session.send(message)
        except ValueError as e:  # bad input: say so, keep the message in the box
            gr.Warning(str(e))
            return message, history, gr.skip(), gr.skip(), gr.skip(), turns
        history = [*history, {"role": "user", "content": message.strip()},
                   {"role": "assistant", "content": _reply(result)}]
        gallery = [(h.path, f"#{h.rank + 1} · {h.score:.3f} · {Path(h.path).name}")
                   for h in result.hits]
        return "", history, gallery, result.pseudo_image, _status(result, engine), session.turns

    def reset():
        return "", [], [], None, "", []

    with gr.Blocks(title="itir — interactive image search") as demo:
        gr.Markdown(f"# itir\n{INTRO}")
        turns = gr.State([])
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
                                     object_fit="contain", preview=False)
                with gr.Row():
                    pseudo = gr.Image(label="Pseudo-image of the query", type="pil",
                                      height=160, interactive=False)
                    status = gr.Markdown()
        outputs = [box, chat, gallery, pseudo, status, turns]
        box.submit(send, [box, chat, turns], outputs, api_name="send")
        send_btn.click(send, [box, chat, turns], outputs, api_name="send_button")
        reset_btn.click(reset, None, outputs, api_name="reset")
    return demo


def allowed_paths(engine: Engine) -> list[str]:
    """Folders Gradio may serve images from: those holding the indexed gallery."""
    roots = {str(Path(p).parent) for p in engine.index.paths}
    return sorted(roots) if len(roots) < 64 else [str(engine.profile.gallery_folder)]
