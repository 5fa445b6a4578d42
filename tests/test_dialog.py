"""The dialog state: ChatIR queries, answered questions, and a plain-data round trip."""

import json

import pytest

from dialog import Click, DialogState, Outcome, chatir_query, check_message, get_reformulation
from world.dialogs import make_dialog, round_query
from world.scene import sample_scene


def test_turns_become_chatir_queries_round_by_round():
    dialog = make_dialog(sample_scene(3))
    state = DialogState()
    for r, text in enumerate(dialog):
        state = state.with_message(text)
        assert state.round == r
        assert state.query() == round_query(dialog, r) == ", ".join(dialog[: r + 1])
    with pytest.raises(TypeError):
        chatir_query("a string is not a list of turns")


def test_an_answer_to_the_open_question_reads_as_question_and_answer():
    state = DialogState().with_message("a red circle")
    state.question = "what color is the background?"
    state = state.with_message("blue")
    assert state.question is None
    assert state.texts == ["a red circle", "what color is the background? blue"]
    assert get_reformulation("latest")(state.texts) == "what color is the background? blue"


def test_state_round_trips_through_plain_json():
    state = DialogState().with_message("a star").with_message("it is yellow")
    state.question = "where is the star?"
    state.clicks.append(Click("/g/1.png", "more", 1))
    state.outcome = Outcome("found", 1, "/g/1.png")
    data = json.loads(json.dumps(state.to_dict()))
    assert DialogState.from_dict(data) == state
    assert DialogState.from_dict(None) == DialogState()


def test_with_message_leaves_the_original_untouched():
    state = DialogState().with_message("a star")
    state.with_message("it is yellow")
    assert state.texts == ["a star"]


def test_messages_are_checked():
    assert check_message("  a cat  ") == "a cat"
    with pytest.raises(ValueError, match="Empty message"):
        check_message("   ")
    with pytest.raises(ValueError, match="too long"):
        check_message("x" * 1001)
