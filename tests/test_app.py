"""The app, started with `itir serve` from another folder, through gradio_client: a dialog
with a clarifying question answered by button, results marked, found; bad input; two
sessions side by side."""

from pathlib import Path

import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def client(world_app):
    url, top_k = world_app
    return Client(url, verbose=False), top_k


def text(message) -> str:
    content = message["content"]  # Gradio 6: a list of {"type": "text", "text": ...} parts
    return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)


def turn(client, *args, api_name):
    box, chat, gallery, pseudo, status, picked, asked = client.predict(*args,
                                                                       api_name=api_name)
    return {"box": box, "chat": chat, "gallery": gallery, "pseudo": pseudo, "status": status,
            "answers": asked["options"], "question": asked["question"], "picked": picked}


def test_a_dialog_answers_by_button_marks_results_and_ends_found(client):
    client, top_k = client
    client.predict(api_name="/reset")
    first = turn(client, "a red circle on a blue background", api_name="/send")
    assert first["box"] == "" and [m["role"] for m in first["chat"]] == ["user", "assistant"]
    assert len(first["gallery"]) == top_k
    # Results come first; the pseudo-image follows (the app's next event, or this call).
    assert Path(client.predict(api_name="/pseudo_image")).is_file()
    assert "Pick an answer below" in text(first["chat"][-1])
    assert 1 <= len(first["answers"]) <= 4
    captions = [item["caption"] for item in first["gallery"]]
    scores = [float(c.split(" · ")[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    question = first["question"]
    assert f"**{question[:1].upper() + question[1:]}**" in text(first["chat"][-1])
    second = turn(client, first["answers"][0], api_name="/answer")
    assert f"{question.rstrip('?')}? {first['answers'][0]}" in second["status"]
    assert "Round 2" in text(second["chat"][-1])
    # Select result #2, say "not this": it leaves the screen.
    rejected = second["gallery"][1]["caption"].split(" · ")[2]
    assert "Selected: #2" in turn(client, 2, api_name="/select")["picked"]
    third = turn(client, api_name="/not_this")
    assert rejected not in [g["caption"].split(" · ")[2] for g in third["gallery"]]
    assert turn(client, 1, api_name="/select")["picked"].startswith("Selected: #1")
    done = turn(client, api_name="/this_is_it")
    assert "Found at round 2" in done["picked"] and done["answers"] == []
    assert text(done["chat"][-1]) == "Found it. Thank you!"


def test_bad_input_is_an_error_with_the_reason_and_loses_nothing(client, world_app_log):
    from gradio_client.exceptions import AppError

    client, _ = client
    client.predict(api_name="/reset")
    with pytest.raises(AppError, match="Empty message"):
        client.predict("   ", api_name="/send")
    turn(client, "a green star", api_name="/send")
    with pytest.raises(AppError, match="Message too long"):
        client.predict("x" * 5000, api_name="/send")
    with pytest.raises(AppError, match="no result #99"):
        client.predict(99, api_name="/select")
    after = turn(client, "on a white background, please", api_name="/send")
    assert len(after["chat"]) == 4  # the refused messages left the dialog as it was
    # A refused request is the person's to fix, not the app's failure: no trace in the log.
    assert "Message too long" not in world_app_log.read_text()


def test_user_text_is_shown_as_text(client):
    client, _ = client
    client.predict(api_name="/reset")
    sneaky = "![](http://127.0.0.1:9/x.png) <b>bold</b> a red star"
    out = turn(client, sneaky, api_name="/send")
    shown = text(out["chat"][0])
    assert "<b>" not in shown and "&lt;b&gt;" in shown and "\\!\\[\\]" in shown


def test_two_sessions_do_not_see_each_others_turns(world_app):
    url, _ = world_app
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    turn(a, "a yellow square", api_name="/send")
    out_b = turn(b, "a purple hexagon", api_name="/send")
    out_a = turn(a, "it is small and striped", api_name="/send")
    assert len(out_b["chat"]) == 2 and len(out_a["chat"]) == 4
    assert "purple" not in out_a["status"] and "yellow" not in out_b["status"]


def test_a_sessions_events_run_one_at_a_time_while_sessions_run_side_by_side(world_app):
    # Two messages of one session sent at once: each must see the other's turn (a race
    # would keep one of them); four other sessions at the same time see only their own.
    url, _ = world_app
    one = Client(url, verbose=False)
    others = [Client(url, verbose=False) for _ in range(4)]
    jobs = [one.submit("a red circle", api_name="/send"),
            one.submit("it is large", api_name="/send")]
    jobs += [c.submit(f"a {colour} star", api_name="/send")
             for c, colour in zip(others, ["blue", "green", "white", "brown"])]
    outputs = [job.result(timeout=120) for job in jobs]
    chat = outputs[1][1] if len(outputs[1][1]) > len(outputs[0][1]) else outputs[0][1]
    said = [text(m) for m in chat if m["role"] == "user"]
    assert sorted(said) == ["a red circle", "it is large"]
    for out, colour in zip(outputs[2:], ["blue", "green", "white", "brown"]):
        assert [text(m) for m in out[1] if m["role"] == "user"] == [f"a {colour} star"]


def test_the_concurrency_bench_sees_isolated_sessions_and_every_picture(world_app):
    from evaluation.bench import bench_concurrency

    url, _ = world_app
    result = bench_concurrency(url, sessions=2, turns=2, pictures=True)
    assert result["isolated"] and result["client_asks_for_pictures"]
    assert result["single"]["p50_ms"] > 0 and result["concurrent"]["p95_ms"] > 0
    assert result["concurrent"]["picture_after_reply"]["n"] == 2 * 2  # every turn's picture
