"""Recorded sessions back as numbers (`itir replay`) and as a ChatIR file (`itir export`)."""

import json

import pytest

from evaluation.dialog_set import read_dialog_set
from evaluation.replay import export_chatir, sessions_of, summary
from itir.cli import main


def record(session, event, round_, text=None, answered=None, hits=(), outcome=None):
    return {"session": session, "event": event, "round": round_, "user_text": text,
            "answered": answered, "query": text, "hits": [
                {"rank": i, "path": p, "score": 1.0 - i / 10} for i, p in enumerate(hits)],
            "outcome": outcome}


@pytest.fixture
def records(tmp_path):
    a = [record("aa" * 8, "turn", 0, "a red star", hits=["x", "y", "t1"]),
         record("aa" * 8, "turn", 1, "blue", "What colour is the background?",
                hits=["t1", "x"]),
         record("aa" * 8, "found", 1, outcome={"status": "found", "round": 1, "path": "t1"})]
    b = [record("bb" * 8, "turn", 0, "a green circle", hits=["t2", "z"]),
         record("bb" * 8, "found", 0, outcome={"status": "found", "round": 0, "path": "t2"})]
    c = [record("cc" * 8, "turn", 0, "a cat", hits=["x"]),
         record("cc" * 8, "abandoned", 0, outcome={"status": "abandoned", "round": 0})]
    folder = tmp_path / "sessions"
    folder.mkdir()
    for rows in (a, b, c):
        (folder / f"{rows[0]['session']}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_replay_numbers_worked_out_by_hand(records, capsys):
    result = summary(sessions_of([records]), rounds=2)
    assert result["sessions"] == 3 and result["found"] == 2
    # found by round: B at 0; A at 1; C never -> 1/3, 2/3, 2/3
    assert result["found_by_round"] == [33.33, 66.67, 66.67]
    # among found sessions, the target's rank in what was shown: A 2 then 0, B 0
    assert result["found_sessions_shown"]["hits@1"] == [50.0, 100.0, 100.0]
    assert result["found_sessions_shown"]["hits@5"] == [100.0, 100.0, 100.0]
    assert main(["replay", str(records), "--rounds", "2", "--methods", ""]) == 0
    assert "3 sessions, 2 found" in capsys.readouterr().out


def test_export_round_trips_through_the_chatir_reader(records, tmp_path, capsys):
    out = tmp_path / "dialogs.json"
    assert export_chatir(sessions_of([records]), out, rounds=1) == (1, 1)
    back = read_dialog_set(out)
    assert back.dialogs == [["a red star", "What colour is the background? blue"]]
    assert back.corpus == ["t1"]
    assert main(["export", str(records), "--out", str(out), "--rounds", "0"]) == 0
    assert "wrote 2 dialogs" in capsys.readouterr().out
    assert main(["replay", str(tmp_path / "nowhere")]) == 2
    assert "no session records" in capsys.readouterr().err
