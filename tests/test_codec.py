import numpy as np

from armorm.model.batching import pad_right, token_budget_groups
from armorm.serving.codec import bytes_items, split_rows


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
