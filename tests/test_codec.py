import numpy as np

from armorm.model.batching import pad_right, token_budget_groups
from armorm.serving.codec import bytes_items, distinct_rows, split_rows


def test_split_rows_inverts_concatenate():
    parts = [np.arange(2 * 3).reshape(2, 3), np.arange(3).reshape(1, 3), np.arange(9).reshape(3, 3)]
    for got, want in zip(split_rows(np.concatenate(parts), [2, 1, 3]), parts, strict=True):
        np.testing.assert_array_equal(got, want)


def test_pad_right():
    out = pad_right([np.array([1, 2, 3]), np.array([4])], pad_value=9)
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 9, 9]])


def test_bytes_items_flattens_a_string_tensor():
    assert bytes_items(np.array([[b"a"], [b"bc"]], dtype=object)) == [b"a", b"bc"]


def test_token_budget_groups_bound_padded_tokens_and_keep_every_row():
    lengths = [100, 10, 50, 400, 20, 30]
    groups = token_budget_groups(lengths, max_tokens=120)
    assert sorted(i for g in groups for i in g) == list(range(6))
    for group in groups:
        if len(group) > 1:
            assert len(group) * max(lengths[i] for i in group) <= 120
    assert [3] in groups, "a row over the budget runs alone, it is not dropped"


def test_distinct_rows_groups_rows_by_their_exact_bits():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 4096)).astype(np.float32)
    base[2, 7] = np.nan
    rows = base[[0, 1, 0, 2, 2, 1, 0]].copy()
    rows[6, 100] = np.nextafter(rows[6, 100], np.float32(1))  # one ulp apart: a different row
    first, inverse = distinct_rows(rows)
    assert len(first) == 4, "three prompts and the row one ulp off"
    np.testing.assert_array_equal(rows[first][inverse], rows)
    assert inverse[0] == inverse[2] and inverse[1] == inverse[5] and inverse[3] == inverse[4]
    assert len({inverse[0], inverse[6]}) == 2
    signed = np.zeros((2, 8), np.float32)
    signed[1, 0] = -0.0  # equal as numbers, not as bits: computed twice, each exactly
    assert len(distinct_rows(signed)[0]) == 2
    empty_first, empty_inverse = distinct_rows(np.zeros((0, 8), np.float32))
    assert empty_first.size == 0 and empty_inverse.size == 0


def test_identical_conversations_are_found_exactly():
    from armorm.serving.codec import distinct_sequences

    a, b = np.array([1, 2, 3]), np.array([1, 2, 4])
    first, inverse = distinct_sequences([a, b, a.copy(), a], np.array([0, 0, 0, 1]), np.array([2, 2, 2, 2]))
    assert first == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2], "ids, gate and reward positions all count"
    first, inverse = distinct_sequences([np.array([5], np.int32), np.array([5], np.int64)], np.zeros(2), np.zeros(2))
    assert first == [0] and inverse.tolist() == [0, 0], "compared as int64, whatever dtype came in"
