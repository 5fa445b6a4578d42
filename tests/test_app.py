"""The app, launched for real, answers a two-message dialog through gradio_client."""

import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def running_app(world_app):
    url, engine = world_app
    return Client(url, verbose=False), engine


def test_two_message_dialog_returns_ranked_images(running_app):
    client, engine = running_app
    box, chat, gallery, pseudo, status = client.predict(
        "a red circle on a blue background", api_name="/send")
    assert box == "" and [m["role"] for m in chat] == ["user", "assistant"]
    assert len(gallery) == engine.profile.top_k
    assert pseudo is not None  # the world generator drew the query
    box, chat, gallery, pseudo, status = client.predict("it is a large circle", api_name="/send")
    assert len(chat) == 4
    assert "a red circle on a blue background, it is a large circle" in status
    captions = [item["caption"] for item in gallery]
    assert captions[0].startswith("#1 ·") and captions[-1].startswith(f"#{len(captions)} ·")
    scores = [float(c.split(" · ")[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert all(item["image"] for item in gallery)


def test_empty_message_keeps_the_dialog(running_app):
    client, _ = running_app
    client.predict(api_name="/reset")
    box, chat, *_ = client.predict("   ", api_name="/send")
    assert chat == [] and box == "   "


def test_engine_session_is_chatir_concatenation(running_app):
    _, engine = running_app
    session = engine.session()
    session.send("a green star")
    result = session.send("what color is the background? white")
    assert result.query == "a green star, what color is the background? white"
    assert result.round == 1 and len(result.hits) == engine.profile.top_k
    with pytest.raises(ValueError, match="too long"):
        session.send("x" * 5000)
    assert session.turns == ["a green star", "what color is the background? white"]
