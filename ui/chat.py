"""Chat UI: the conversation and the system's question on the left, the best matches (with
"more like this", "not this", "this is it") and the pseudo-image on the right.

Per-browser-session state is plain data (the dialog state, the chat messages, the results on
screen, the selected one, the chosen fusion), so API clients drive exactly what browsers do;
the engine with its models is shared by all sessions. Sessions' turns run side by side, each
session's events one at a time (`SessionLocks`).
Whatever a person typed is shown as text: it is escaped before the Chatbot renders Markdown.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from PIL import Image

from dialog import DialogState
from engine.engine import Engine, TurnResult
from engine.paths import home
from ui.thumbnails import Thumbnails

INTRO = ("Describe the picture you are looking for. Answer the question with a button or in "
         "your own words; select a result to say *more like this*, *not this* or *this is "
         "it*.")
CACHE_SWEEP = (600, 1800)  # Gradio's files: every 10 min, delete what is older than 30 min
ANSWER_BUTTONS = 4
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def as_text(text: str) -> str:
    """Text as the person typed it: no HTML tags, links or images from user input."""
    return _MARKDOWN.sub(r"\\\1", html.escape(text, quote=False))


def refused(reason: str) -> gr.Error:
    """A request the app turns down (an empty message, no result selected): the person and
    API clients get the reason; the server's log is for the app's own failures, so no trace."""
    return gr.Error(reason, print_exception=False)


def _reply(result: TurnResult) -> str:
    lines = [f"Round {result.round + 1}: searched for *{as_text(result.query)}*."]
    if result.hits:
        lines.append(f"Best match: `{Path(result.hits[0].path).name}` "
                     f"(score {result.hits[0].score:.3f}).")
    if result.notice:
        lines.append(as_text(result.notice))
    if result.question:
        asked = result.question[:1].upper() + result.question[1:]
        lines.append(f"\n\n**{asked}** Pick an answer below or type your own.")
    else:
        lines.append("Add more detail (colours, shapes, sizes, where things are).")
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
    stages = sorted(result.timings_ms.items(), key=lambda kv: kv[0] == "total")  # total last
    timings = " · ".join(f"{k.replace('_', ' ')} {v:.0f} ms" for k, v in stages)
    routed = ""
    if result.domains:  # image-domain adapters (`itir domain add`) the pseudo-image used
        routed = " · **Domains:** pseudo-image routed to " + ", ".join(
            f"{as_text(n)} {w:.0%}" for n, w in sorted(result.domains.items(),
                                                    key=lambda kv: -kv[1]))
    busy = ""
    if result.steps == 0:  # cpu_step_budget: too many searches at once to draw for this one
        busy = (" · searched with the text alone: the CPU was serving several turns at once "
                "(the pseudo-image is drawn after the results)")
    elif result.steps is not None and engine.generator is not None \
            and result.steps < engine.generator.steps:
        busy = (f" · pseudo-image in {result.steps} of {engine.generator.steps} steps "
                "(the CPU was serving several turns at once)")
    return (f"**Query:** {as_text(result.query)}  \n**Fusion:** {_decision(result)}{routed}"
            f"{busy} · **Gallery:** {len(engine.index)} images · {timings}")


def shown(image: Image.Image | None) -> Image.Image | None:
    if image is not None and image.width < 128:  # 32x32 world images: keep pixels crisp
        image = image.resize((128, 128), Image.NEAREST)
    return image


def empty_state(fusion: str = "") -> dict:
    return {"dialog": DialogState().to_dict(), "history": [], "hits": [], "selected": None,
            "fusion": fusion, "query": None, "steps": None}


class SessionLocks:
    """One lock per browser session, so a click during a turn waits for it instead of racing
    it, while other sessions' turns run beside it.

    Gradio hands every event of a session the same state object, read when the event starts;
    an event that waited here reads what the one before it wrote only because each event
    writes its new state into that object, in place (`exclusive`). The lock is the object's,
    kept while an event holds it: its id cannot pass to another object meanwhile, and nothing
    is left behind when Gradio drops a closed session."""

    def __init__(self) -> None:
        self._locks: dict[int, list] = {}  # id(state) -> [lock, events holding or waiting]
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, state: dict) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(id(state), [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[id(state)]

    def exclusive(self, state: dict, event: Callable[[], tuple | dict]) -> tuple | dict:
        """`event()`'s outputs, run alone for this session; its new state (the last output,
        or the only one) is written into `state`, which is returned in its place."""
        with self.hold(state):
            outputs = event()
            new = outputs[-1] if isinstance(outputs, tuple) else outputs
            if new is not state:
                state.clear()
                state.update(new)
            return (*outputs[:-1], state) if isinstance(outputs, tuple) else state


def build_ui(engine: Engine, delete_cache: tuple[int, int] = CACHE_SWEEP,
             concurrency: int | None = None, thumbnails: Path | None = None) -> gr.Blocks:
    """The chat app over `engine`; `concurrency` turns of different sessions at once
    (default: the profile's `concurrent_turns`); result thumbnails are kept in `thumbnails`
    (default `ITIR_HOME/thumbnails`)."""
    fusions = list(engine.fusions)
    thumbnail = Thumbnails(thumbnails or home() / "thumbnails")
    sessions = SessionLocks()
    concurrency = concurrency or engine.profile.concurrent_turns

    def answer_buttons(options: list[str]) -> list:
        return [gr.update(value=options[i], visible=True) if i < len(options)
                else gr.update(value="", visible=False) for i in range(ANSWER_BUTTONS)]

    def render(state: dict, result: TurnResult | None, status: str | None = None) -> tuple:
        """Every output of an event, from the state (and the turn it ran, if any)."""
        dialog = DialogState.from_dict(state["dialog"])
        gallery = [(thumbnail(p), f"#{i + 1} · {s:.3f} · {Path(p).name}")
                   for i, (p, s) in enumerate(state["hits"])]
        pseudo = gr.skip()
        if result is not None:
            pseudo = shown(result.pseudo_image) if result.pseudo_image else gr.skip()
            status = _status(result, engine)
        selected = state["selected"]
        picked = (f"Selected: #{selected + 1} `{Path(state['hits'][selected][0]).name}`"
                  if selected is not None else "Select a result to mark it.")
        if dialog.outcome is not None:
            picked = (f"Found at round {dialog.outcome.round + 1}. Press **New search** to "
                      "look for another picture." if dialog.outcome.status == "found" else "")
        options = dialog.options if dialog.outcome is None else []
        asked = {"question": dialog.question if options else None, "options": options}
        return ("", state["history"], gallery, pseudo, status if status is not None
                else gr.skip(), *answer_buttons(options), picked, asked, state)

    def turn(state: dict, run) -> tuple:
        # Results first: the pseudo-image, when the fusion does not need it, is drawn by the
        # event that follows, so a turn's reply never waits for the diffusion model.
        session = engine.session(state["dialog"], state.get("fusion") or None, display=False)
        try:
            result, said = run(session)
        except ValueError as e:  # bad input: an error API clients see too; nothing is lost
            raise refused(str(e)) from None
        history = [*state["history"], *([{"role": "user", "content": as_text(said)}]
                                        if said else [])]
        if result is None:  # "this is it"
            history.append({"role": "assistant", "content": "Found it. Thank you!"})
        else:
            history.append({"role": "assistant", "content": _reply(result)})
        state = {**state, "dialog": session.state.to_dict(), "history": history,
                 "hits": ([(h.path, h.score) for h in result.hits] if result
                          else state["hits"]),
                 "query": result.query if result else state.get("query"),
                 "steps": result.steps if result else state.get("steps"),
                 "selected": None if result else state["selected"]}
        return render(state, result)

    def send(message: str, state: dict, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        return sessions.exclusive(state, lambda: turn(
            state, lambda s: (s.send(message), message.strip())))

    def answer(option: str, state: dict, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        return sessions.exclusive(state, lambda: turn(
            state, lambda s: (s.send(option, answer=True), option)))

    def select(state: dict, evt: gr.SelectData):
        return sessions.exclusive(state, lambda: render({**state, "selected": evt.index},
                                                        None))

    def select_by_index(index: float, state: dict):  # the same, for API clients
        def pick():
            i = int(index) - 1
            if not 0 <= i < len(state["hits"]):
                raise refused(f"there is no result #{int(index)} on screen "
                              f"({len(state['hits'])} shown)")
            return render({**state, "selected": i}, None)
        return sessions.exclusive(state, pick)

    def mark(kind: str):
        said = {"more": "More like this", "less": "Not this", "found": "This is it"}[kind]

        def click(state: dict):
            if state["selected"] is None or state["selected"] >= len(state["hits"]):
                raise refused("Select a result first (click a picture in the gallery).")
            path = state["hits"][state["selected"]][0]
            return turn(state, lambda s: (s.click(path, kind), f"{said}: {Path(path).name}"))

        def handler(state: dict, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
            return sessions.exclusive(state, lambda: click(state))
        return handler

    def draw(state: dict, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        # Read once: the session's next turn may rewrite them.
        query, steps = state.get("query"), state.get("steps")
        if not query:
            return gr.skip()
        # Exactly what the turn searched with; a turn that searched with its text alone (0
        # steps, a busy CPU) gets a picture drawn now.
        image = engine.pseudo_image(query, steps)
        return shown(image) if image is not None else gr.skip()

    def choose_fusion(name: str, state: dict):
        return sessions.exclusive(state, lambda: {**state, "fusion": name})

    def reset(state: dict):
        def start_over():
            if state.get("dialog"):
                engine.session(state["dialog"]).abandon()  # recorded as abandoned, if on
            fresh = empty_state(state.get("fusion", ""))
            return ("", [], [], None, "", *answer_buttons([]), "",
                    {"question": None, "options": []}, fresh)
        return sessions.exclusive(state, start_over)

    with gr.Blocks(title="itir — interactive image search", delete_cache=delete_cache) as demo:
        gr.Markdown(f"# itir\n{INTRO}")
        state = gr.State(empty_state())  # each session gets its own deep copy
        with gr.Row():
            with gr.Column(scale=5):
                chat = gr.Chatbot(label="Dialog", height=420)
                with gr.Row():
                    answers = [gr.Button(visible=False, size="sm", elem_classes="answer")
                               for _ in range(ANSWER_BUTTONS)]
                box = gr.Textbox(placeholder="e.g. two red circles on a blue background",
                                 show_label=False, lines=1, max_lines=4, autofocus=True)
                with gr.Row():
                    send_btn = gr.Button("Search", variant="primary")
                    reset_btn = gr.Button("New search")
                fusion = gr.Dropdown(fusions, value=engine.fusion.name, label="Fusion",
                                     info="how text and pseudo-image become one query")
            with gr.Column(scale=7):
                gallery = gr.Gallery(label="Best matches", columns=4, height=420,
                                     object_fit="contain", preview=False, elem_id="results")
                picked = gr.Markdown("Select a result to mark it.", elem_id="picked")
                with gr.Row():
                    more = gr.Button("More like this", size="sm")
                    less = gr.Button("Not this", size="sm")
                    found = gr.Button("This is it", size="sm", variant="primary")
                with gr.Row():
                    pseudo = gr.Image(label="Pseudo-image of the query", type="pil",
                                      height=160, interactive=False, elem_id="pseudo")
                    status = gr.Markdown()
        notice = f" · {html.escape(engine.notice)}" if engine.notice else ""
        gr.Markdown(f"<small>{engine.profile.describe()} · running "
                    f"{html.escape(engine.describe())}{notice}</small>", elem_id="footer")
        # What the answer buttons show, for API clients (buttons are not API outputs).
        asked = gr.JSON(visible=False)
        outputs = [box, chat, gallery, pseudo, status, *answers, picked, asked, state]
        # `concurrency` turns of different sessions at a time; their model calls queue on the
        # engine's model thread, which batches them.
        # Progress, and a refusal's error badge, show on the status line only: on the dialog
        # and the results an error badge hides what they hold until the next turn, and a
        # refused message ("   ", a search that is over) changes neither.
        run = {"concurrency_id": "turn", "concurrency_limit": concurrency,
               "show_progress_on": [status]}
        # The pseudo-image is drawn when a search's status appears: an event of its own (in
        # its own lane: the generator is slow), so neither the reply nor an API client's
        # call waits for it. API clients that want it ask `/pseudo_image`.
        status.change(draw, [state], [pseudo], api_name="pseudo_image",
                      concurrency_id="draw", concurrency_limit=1,
                      trigger_mode="always_last")  # a drawing the next turn made stale is dropped
        box.submit(send, [box, state], outputs, api_name="send", **run)
        send_btn.click(send, [box, state], outputs, api_name="send_button", **run)
        for button in answers:
            button.click(answer, [button, state], outputs, api_name=False, **run)
        typed_answer = gr.Textbox(visible=False)  # API clients answer by text
        gr.Button(visible=False).click(answer, [typed_answer, state], outputs,
                                       api_name="answer", **run)
        # Everything that writes the state holds the session's lock (`SessionLocks`), so a
        # click during a turn waits for it instead of racing it and losing one of the two.
        gallery.select(select, [state], outputs, api_name=False, **run)
        rank = gr.Number(visible=False, precision=0)  # API clients select by rank (1-based)
        gr.Button(visible=False).click(select_by_index, [rank, state], outputs,
                                       api_name="select", **run)
        more.click(mark("more"), [state], outputs, api_name="more_like_this", **run)
        less.click(mark("less"), [state], outputs, api_name="not_this", **run)
        found.click(mark("found"), [state], outputs, api_name="this_is_it", **run)
        fusion.change(choose_fusion, [fusion, state], [state], api_name="fusion", **run)
        reset_btn.click(reset, [state], outputs, api_name="reset", **run)
        chat.clear(reset, [state], outputs, api_name="clear", **run)
    return demo
