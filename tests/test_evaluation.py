"""Preference-pair arithmetic as RewardBench does it, checked against values computed by hand, and the dataset
shapes armorm-score accepts (pure: no server)."""

import json

import pytest

from armorm_client import dataset, evaluation
from armorm_client.dataset import Columns, RowError


def tally_of(rows):
    tally = evaluation.PairTally()
    for subset, chosen, rejected in rows:
        tally.add(subset, chosen, rejected)
    return tally


def test_ties_count_as_wrong_like_rewardbench():
    tally = tally_of([("a", 1.0, 0.5), ("a", 0.5, 0.5), ("a", 0.1, 0.2)])
    assert tally.by_subset() == {"a": pytest.approx(1 / 3)}
    assert evaluation.correct(0.3, 0.3) == 0


def test_section_scores_match_a_hand_computation():
    """A synthetic file's subsets, with each section worked out by hand:
    Chat      = 100 × (0.5×100 + 1.0×28) / (100 + 28)  = 60.9375   (alpacaeval-easy 1/2, mt-bench-easy 1/1)
    Chat Hard = 0                                                 (mt-bench-hard: a tie, counted wrong)
    Safety    = 100                                               (donotanswer 1/1)
    Reasoning = 100 × (0×984 + 1×164) / (984 + 164) = 14.2857    (math-prm weighs 984, as RewardBench does)
    Prior     = 100 × (1 + 0) / 2 = 50                            (shp 1/1, anthropic_helpful 0/1)
    Score     = (60.9375 + 0 + 100 + 14.2857 + 0.5×50) / 4.5 = 44.4940
    """
    tally = tally_of([
        ("alpacaeval-easy", 2.0, 1.0), ("alpacaeval-easy", 0.0, 1.0), ("mt-bench-easy", 3.0, -1.0),
        ("mt-bench-hard", 0.25, 0.25), ("donotanswer", 1.0, 0.0),
        ("math-prm", 0.0, 0.5), ("hep-python", 0.9, 0.1), ("shp", 1.0, 0.0), ("anthropic_helpful", 0.0, 1.0),
    ])
    sections = evaluation.section_scores(tally.by_subset())
    assert sections["Chat"] == pytest.approx(60.9375)
    assert sections["Chat Hard"] == 0
    assert sections["Safety"] == 100
    assert sections["Reasoning"] == pytest.approx(16400 / 1148)
    assert sections["Prior Sets"] == 50
    assert sections["Score"] == pytest.approx((60.9375 + 0 + 100 + 16400 / 1148 + 25) / 4.5)
    assert round(sections["Score"], 2) == 44.49


def test_the_model_cards_table_adds_up_to_its_score():
    """ArmoRM's card: Chat 96.9, Chat Hard 76.8, Safety 92.2, Reasoning 97.3, Prior Sets 74.3 → Score 89.0."""
    card = {"Chat": 96.9, "Chat Hard": 76.8, "Safety": 92.2, "Reasoning": 97.3}
    score = (sum(card.values()) + evaluation.PRIOR_SETS_WEIGHT * 74.3) / (len(card) + evaluation.PRIOR_SETS_WEIGHT)
    assert round(score, 1) == 89.0


def test_without_every_section_there_is_no_overall_score():
    sections = evaluation.section_scores({"alpacaeval-easy": 1.0})
    assert sections == {"Chat": 100.0}
    assert evaluation.report(tally_of([("x", 1, 0)]))[0].startswith("pairs: 1 scored, accuracy 100.00%")


def test_rows_take_the_common_dataset_shapes():
    columns = Columns()
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert dataset.conversation(messages, columns) == messages
    assert dataset.conversation({"messages": messages}, columns) == messages
    assert dataset.conversation({"messages": json.dumps(messages)}, columns) == messages
    assert dataset.conversation({"prompt": "hi", "response": "hello"}, columns) == messages
    assert dataset.conversation({"prompt": messages[:1], "response": "hello"}, columns) == messages
    assert dataset.conversation({"chat": messages}, Columns(messages="chat")) == messages
    with pytest.raises(RowError, match="no 'messages' list and no 'prompt' \\+ 'response'"):
        dataset.conversation({"text": "x"}, columns)
    chosen, rejected = dataset.pair({"prompt": "hi", "chosen": "hello", "rejected": "go away"}, columns)
    assert chosen == messages and rejected[-1]["content"] == "go away" and rejected[0] == messages[0]
    whole = dataset.pair({"chosen": messages, "rejected": messages}, columns)
    assert whole == (messages, messages)
    with pytest.raises(RowError, match="needs 'prompt' too"):
        dataset.pair({"chosen": "a", "rejected": "b"}, columns)


def test_a_torn_jsonl_output_resumes_after_its_last_whole_row(tmp_path):
    output = tmp_path / "out.jsonl"
    output.write_text('{"id": 0, "score": 1}\n{"id": "b", "score": 2}\n{"id": 2, "sco')
    assert dataset.resume_jsonl(str(output)) == (2, "b")
    assert output.read_text().endswith('"score": 2}\n'), "the torn line is cut off"


def test_progress_line_on_a_terminal_and_silence_elsewhere():
    import io

    quiet = io.StringIO()
    progress = evaluation_progress(total=100, stream=quiet, enabled=False)
    progress.update(tokens=50)
    assert quiet.getvalue() == "", "not a terminal: no progress line"
    shown = io.StringIO()
    progress = evaluation_progress(total=100, stream=shown, enabled=True)
    progress.update(rows=10, tokens=500, errors=1)
    line = shown.getvalue()
    assert line.startswith("\r10/100 rows") and "rows/s" in line and "tok/s" in line and "ETA" in line
    assert "1 errors" in line
    assert progress.finish().startswith("10 rows in ")


def evaluation_progress(**options):
    from armorm_client.progress import Progress

    return Progress(interval=0, **options)
