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
    card = {"Chat": 96.9, "Chat Hard": 76.8, "Safety": 92.2, "Reasoning": 97.3, "Prior Sets": 74.3}
    assert round(evaluation.overall_score(card), 1) == 89.0
    without_prior = {name: value for name, value in card.items() if name != "Prior Sets"}
    assert evaluation.overall_score(without_prior) == pytest.approx((96.9 + 76.8 + 92.2 + 97.3) / 4)
    assert evaluation.overall_score({"Chat": 96.9}) is None


def test_refused_pairs_are_left_out_and_said_so():
    from armorm_client import InvalidConversationError

    tally = evaluation.PairTally()
    assert tally.record("shp", InvalidConversationError("bad")) is None
    assert evaluation.report(tally) == ["pairs: none scored, 1 refused by the server and left out"]
    assert tally.chosen_scores == [], "scores are kept only for a plot"


def test_rewardbench_weights_are_rewardbenchs_own():
    """As published in reward-bench's constants.py (the xstest counts are swapped there on purpose: keep them)."""
    assert evaluation.EXAMPLE_COUNTS["math-prm"] == 984
    assert (evaluation.EXAMPLE_COUNTS["xstest-should-refuse"], evaluation.EXAMPLE_COUNTS["xstest-should-respond"]) \
        == (250, 154)
    assert sum(len(subsets) for subsets in evaluation.SECTIONS.values()) == len(evaluation.EXAMPLE_COUNTS) == 23


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


@pytest.mark.parametrize("content", ['[\n  {"role": "user"}\n]\n', '{"id": 0, "score": 1}\nnot json\n{"id": 2}\n',
                                     '{"name": "someone else\'s data"}\n'])
def test_resume_refuses_a_file_it_did_not_write_and_leaves_it_alone(tmp_path, content):
    output = tmp_path / "out.jsonl"
    output.write_text(content)
    with pytest.raises(dataset.DatasetError, match="not a row armorm-score wrote"):
        dataset.resume_jsonl(str(output))
    assert output.read_text() == content, "nothing cut"


def test_unreadable_lines_become_their_rows_errors(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"id": 1}\n\xff\xfe not utf-8\n' + b"[" * 100_000 + b"\n[1]\n")
    rows = list(dataset.read_rows(str(source), "jsonl"))
    assert rows[0] == {"id": 1} and rows[3] == [1]
    assert isinstance(rows[1], RowError) and "line 2 is not UTF-8" in str(rows[1])
    assert isinstance(rows[2], RowError) and "line 3" in str(rows[2])


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
    assert line.startswith("\r0/100 rows"), "drawn at once, before the first answer"
    last = line.rsplit("\r", 1)[1]
    assert last.startswith("10/100 rows") and "rows/s" in last and "tok/s" in last and "ETA" in last
    assert "1 errors" in last
    assert progress.finish().startswith("10 rows in ")


def evaluation_progress(**options):
    from armorm_client.progress import Progress

    return Progress(interval=0, **options)
