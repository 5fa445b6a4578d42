"""The interactive loop: clarifying questions, relevance feedback, found."""

from dataclasses import replace

import numpy as np
import pytest

from dialog import Click, DialogState, Turn
from engine.factory import build_engine
from engine.profile import GallerySpec, load_profile
from engine.questioner import Question, Questioner, load_bank


class FixedTexts:
    """An encoder whose text embeddings are given by hand (the questioner reads only texts)."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def encode_texts(self, texts):
        v = np.array([self.table[t] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_questioner_asks_what_splits_the_results_and_offers_likely_answers():
    bank = [Question("agree", "Which a?", "{}", ("a1", "a2")),
            Question("split", "Which b?", "{}", ("b1", "b2", "b3"))]
    encoder = FixedTexts({"a1": [1, 0, 0, 0], "a2": [-1, 0, 0, 0],
                          "b1": [0, 1, 0, 0], "b2": [0, -1, 0, 0], "b3": [0, 0, 0, 1]})
    # Four results: all clearly "a1"; two "b1", two "b2", none "b3".
    results = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, -1, 0, 0], [1, -1, 0, 0]], np.float32)
    results /= np.linalg.norm(results, axis=1, keepdims=True)
    questioner = Questioner(bank, encoder, temperature=0.1, options=2)
    asked = questioner.ask(results, asked=[])
    assert asked.question.id == "split" and asked.gain > 0.5
    assert sorted(asked.options) == ["b1", "b2"]  # b3 fits no result: not offered
    assert questioner.ask(results, asked=["split"]).question.id == "agree"
    assert questioner.ask(results, asked=["split", "agree"]) is None
    # What the person already said is not asked again, however the results split on it.
    said = (replace(bank[0], said=("{} for a",)), replace(bank[1], said=("b is {}", "{}!")))
    stated = Questioner(list(said), encoder, temperature=0.1)
    assert stated.ask(results, [], "I want b2! And it is big").question.id == "agree"
    assert stated.ask(results, [], "B IS B3 / a1 for a") is None  # any answer, any case
    assert stated.ask(results, [], "b1s are nice, xa2 for a").question.id == "split"  # words
    baseline = Questioner(bank, encoder, strategy="random", seed=1)
    assert {baseline.ask(results, []).question.id for _ in range(20)} == {"agree", "split"}
    with pytest.raises(ValueError, match="information or random"):
        Questioner(bank, encoder, strategy="best")


def test_question_banks_are_data_and_bad_ones_are_explained(tmp_path):
    world = load_bank("world")
    assert {"background", "count", "shape", "colour", "size", "fill", "position"} <= {
        q.id for q in world}
    assert len(load_bank("photos")) >= 5
    bad = tmp_path / "b.toml"
    bad.write_text('[[question]]\nid = "x"\ntext = "?"\nprompt = "no slot"\nanswers = ["a", "b"]')
    with pytest.raises(ValueError, match="a prompt with"):
        load_bank(str(bad))
    bad.write_text('[[question]]\nid = "x"\ntext = "?"\nprompt = "{}"\nanswers = ["a", "b"]\n'
                   'said = ["no slot"]')
    with pytest.raises(ValueError, match="each `said` form needs"):
        load_bank(str(bad))
    background = {q.id: q for q in world}["background"]
    assert background.stated_in("a red circle on a blue background")
    assert background.stated_in("a yellow star over white")
    assert not background.stated_in("a blue circle on the left")
    with pytest.raises(FileNotFoundError, match="no question bank 'nope'"):
        load_bank("nope")


@pytest.fixture(scope="module")
def engine(tmp_path_factory, gallery_of):
    gallery = gallery_of(tmp_path_factory.mktemp("g"), 40)
    home = tmp_path_factory.mktemp("home")
    profile = replace(load_profile("world"), fusion="text", show_pseudo_image=False,
                      top_k=6, gallery=GallerySpec(folder=str(gallery)),
                      index=str(home / "g.itirx"))
    return build_engine(profile)


def test_a_turn_asks_an_unasked_question_and_a_button_answer_joins_the_dialog(engine):
    session = engine.session()
    first = session.send("a red circle")
    assert first.question and first.options and session.state.question == first.question
    assert first.timings_ms["question"] < 50
    second = session.send(first.options[0], answer=True)
    assert session.state.turns[-1].text.endswith(f"? {first.options[0]}")
    assert second.question_id not in session.state.asked[:-1]  # never the same twice
    # A long typed message is a new description, not an answer glued to the question.
    session.send("and a large blue star somewhere near the bottom")
    assert session.state.turns[-1].question is None


def test_feedback_moves_the_query_and_rejected_images_never_come_back(engine):
    session = engine.session()
    before = session.send("a small green square")
    top = before.hits[0].path
    after = session.click(top, "less")
    assert top not in [h.path for h in after.hits] and len(after.hits) == len(before.hits)
    # The sixth result, liked, climbs.
    liked = before.hits[5].path
    again = session.click(liked, "more")
    assert [h.path for h in again.hits].index(liked) < 5
    assert top not in [h.path for h in again.hits]  # still rejected
    assert session.state.marked("less") == [top] and session.state.marked("more") == [liked]
    assert session.click(liked, "found") is None
    assert session.state.outcome.status == "found" and session.state.outcome.path == liked
    with pytest.raises(ValueError, match="this search is over"):
        session.click(top, "more")
    with pytest.raises(ValueError, match="This search is over"):
        session.send("and a red circle")
    with pytest.raises(ValueError, match="more, less or found"):
        engine.session().click(top, "maybe")


def test_feedback_weighs_a_mark_by_its_age_when_it_decays(engine):
    a, b = engine.index.paths[:2]
    va, vb = engine.index.vectors_of([0, 1])

    def query(liked):
        return engine.search("a small green square", liked=liked).query_vector[0]

    def lean(q):  # how much nearer a than b the query is
        return float(q @ va - q @ vb)

    assert lean(query({a: 1.0, b: 0.25})) > lean(query([a, b])) > lean(query({a: 0.25, b: 1.0}))
    assert np.allclose(query([a, b]), query({a: 0.5, b: 0.5}))  # only the ratio matters
    # In a session, a mark made one round ago weighs `decay` of a mark made now.
    profile = engine.profile
    engine.profile = replace(profile, feedback=replace(profile.feedback, decay=0.5))
    try:
        session = engine.session()
        session.send("a small green square")
        session.click(a, "more")  # round 0
        session.send("it is over red")
        result = session.click(b, "more")  # round 1
        expected = engine.search(session.query, 1, liked={a: 0.5, b: 1.0}).query_vector
        assert np.allclose(result.query_vector, expected, atol=1e-6)
    finally:
        engine.profile = profile
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\]"):
        replace(profile, feedback=replace(profile.feedback, decay=0.0))
    # Marks that weigh nothing, or name no indexed image, pull nowhere; a negative weight is
    # refused rather than turned into a push.
    plain = query(())
    assert np.allclose(query({a: 0.0}), plain) and np.allclose(query({"gone.png": 1.0}), plain)
    for weight in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite number, 0 or more"):
            query({a: weight})
    # Ages count from the newest mark of a kind: marks a thousand rounds apart give the
    # newest one's pull, not 0/0.
    state = DialogState(turns=[Turn("a small green square"), Turn("over red")],
                        clicks=[Click(a, "more", 0), Click(b, "more", 1000)])
    far = engine.turn(state).query_vector
    assert np.isfinite(far).all()
    assert np.allclose(far, engine.search(state.query(), 1, liked=[b]).query_vector, atol=1e-6)


def test_every_event_is_recorded_before_the_reply_and_survives_a_crash(engine, tmp_path):
    import json

    from engine.recorder import Recorder, read_records

    engine.recorder = Recorder(tmp_path / "rec")
    try:
        session = engine.session()
        first = session.send("a blue star")
        path = engine.recorder.path(session.state.session_id)
        assert len(path.read_text().splitlines()) == 1  # on disk when send() returns
        session.send(first.options[0], answer=True)
        session.click(first.hits[1].path, "less")
        session.click(first.hits[2].path, "found")
    finally:
        engine.recorder = None
    records = read_records([tmp_path / "rec"])
    assert [r["event"] for r in records] == ["turn", "turn", "less", "found"]
    assert [r["round"] for r in records] == [0, 1, 1, 1]
    assert records[1]["answered"] == first.question and records[1]["user_text"] == first.options[0]
    assert records[0]["query"] == "a blue star" and len(records[0]["hits"]) == 6
    assert records[0]["question"] == first.question and records[0]["encoder"]
    assert records[3]["outcome"] == {"status": "found", "round": 1, "path": first.hits[2].path}
    with open(path, "a") as f:  # a crash in the middle of writing the next record
        f.write('{"session": "cut off in the mid')
    assert len(read_records([path])) == 4
    assert json.loads(path.read_text().splitlines()[0])["session"] == session.state.session_id


def test_a_sessions_folder_deleted_while_the_app_runs_is_made_again(engine, tmp_path):
    import shutil

    from engine.recorder import Recorder, read_records

    engine.recorder = Recorder(tmp_path / "rec")
    try:
        session = engine.session()
        session.send("a blue star")
        shutil.rmtree(tmp_path / "rec")  # someone cleans up old sessions
        session.send("it is small")  # the turn goes on, and is recorded
    finally:
        engine.recorder = None
    assert [r["round"] for r in read_records([tmp_path / "rec"])] == [1]


def test_a_dialog_past_the_token_window_keeps_the_newest_answers_and_says_so(engine):
    from dialog.query import fit_turns

    session = engine.session()
    session.send(" ".join(["a large red striped circle in the top left"] * 12))  # ~110 tokens
    for answer in ("and a small blue star at the bottom", "the background is green",
                   "there is also a yellow hexagon on the right"):
        result = session.send(answer)
    assert result.query.endswith("there is also a yellow hexagon on the right")
    assert "background is green" in result.query
    assert engine.encoder.count_tokens(result.query) <= engine.encoder.max_tokens
    assert "longer than the text encoder reads (128 tokens)" in result.notice
    # By hand: with a 9-word budget the oldest follow-up goes first.
    count = lambda t: len(t.replace(",", " ").split())  # noqa: E731
    fitted = fit_turns(["one two three", "a b", "c d", "e f", "g h"], count, 9)
    assert fitted.texts == ["one two three", "c d", "e f", "g h"] and fitted.dropped == [1]
