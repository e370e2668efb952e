"""FFEM's leave-one-out recall against brute force, including a last partial block."""
import numpy as np
import pytest

from plsc.metrics.recall import leave_one_out_ranks, leave_one_out_report, recall_at_k


def brute_force_recall_at_1(embeddings, labels):
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    return float(np.mean(labels[np.argmax(scores, axis=1)] == labels))


def data(seed, count=23, identities=6, dim=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, identities, count)
    return (rng.standard_normal((identities, dim))[labels] + rng.standard_normal((count, dim))).astype(np.float32), labels


@pytest.mark.parametrize("block_rows", [None, 1, 4, 10, 22])  # 23 rows: every block size leaves a partial block
def test_recall_at_1_matches_brute_force(block_rows):
    for seed in range(5):
        embeddings, labels = data(seed)
        ranks = leave_one_out_ranks(embeddings, labels, block_rows)
        assert recall_at_k(ranks, (1,))[1] == pytest.approx(brute_force_recall_at_1(embeddings, labels))


def test_identical_duplicate_is_not_excluded():
    # Only the query itself is left out: an exact duplicate of another identity still wins.
    embeddings = np.array([[1, 0], [1, 0], [1, 0.01], [0, 1]], dtype=np.float32)
    labels = np.array([0, 1, 0, 2])
    ranks = leave_one_out_ranks(embeddings, labels, block_rows=3)
    assert ranks[0] == 2  # the duplicate of identity 1 beats its own identity's nearest image
    assert ranks[1] == 4  # identity 1 has no other image: never a hit
    assert ranks[3] == 4


def test_report_searches_within_each_set():
    embeddings, labels = data(7, count=40, identities=8)
    group_of = {label: ("A" if label < 4 else "B") for label in range(8)}
    report = leave_one_out_report(embeddings, labels, group_of, (1,), block_rows=7)
    by_set = {row[0]: row for row in report["rows"]}
    for name in ("A", "B"):
        members = np.array([group_of[label] == name for label in labels])
        assert by_set[name][2] == pytest.approx(brute_force_recall_at_1(embeddings[members], labels[members]))
    assert report["summary"]["mean recall@1"] == pytest.approx((by_set["A"][2] + by_set["B"][2]) / 2)
