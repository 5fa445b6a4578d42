"""The app, started with `itir serve` from another folder, answers a dialog through
gradio_client."""

import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def client(world_app):
    url, top_k = world_app
    return Client(url, verbose=False), top_k


def test_two_message_dialog_returns_ranked_images(client):
    client, top_k = client
    box, chat, gallery, pseudo, status = client.predict(
        "a red circle on a blue background", api_name="/send")
    assert box == "" and [m["role"] for m in chat] == ["user", "assistant"]
    assert len(gallery) == top_k
    assert pseudo is not None  # the world generator drew the query
    box, chat, gallery, pseudo, status = client.predict("it is a large circle", api_name="/send")
    assert len(chat) == 4 and "Round 2" in str(chat[-1]["content"])
    assert "a red circle on a blue background, it is a large circle" in status
    assert "**Fusion:** text (w text 1.00)" in status
    captions = [item["caption"] for item in gallery]
    assert captions[0].startswith("#1 ·") and captions[-1].startswith(f"#{len(captions)} ·")
    scores = [float(c.split(" · ")[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert all(item["image"] for item in gallery)


def test_bad_messages_keep_the_dialog_and_the_text(client):
    client, _ = client
    client.predict(api_name="/reset")
    box, chat, *_ = client.predict("   ", api_name="/send")
    assert chat == [] and box == "   "
    client.predict("a green star", api_name="/send")
    long = "x" * 5000
    box, chat, *_ = client.predict(long, api_name="/send")
    assert box == long and len(chat) == 2  # refused, nothing of the dialog lost
