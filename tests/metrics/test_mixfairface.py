"""MixFairFace's protocols against a brute-force numpy reference over the full similarity matrix."""
import numpy as np
import pytest

from plsc.metrics import mixfairface
from plsc.metrics.fairness import group_accuracy_summary


def brute_force(embeddings, labels, target_fpr):
    """The protocol as written: full N x N matrix, exact FPR at every bisection step."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = (unit @ unit.T).astype(np.float32)
    same = labels[:, None] == labels[None, :]
    eye = np.eye(len(labels), dtype=bool)
    low, high = -1.0, 1.0
    for _ in range(70):
        threshold = (low + high) / 2
        accept = scores > np.float32(threshold)
        fpr = (accept & ~same).sum() / (~same).sum()
        if 0 < fpr - target_fpr < target_fpr / 10:
            break
        low, high = (threshold, high) if fpr > target_fpr else (low, threshold)
    accept = scores > np.float32(threshold)
    tp = (accept & same & ~eye).sum(1)
    own = same.sum(1) - 1
    image_tpr = np.where(own > 0, tp / np.maximum(own, 1), np.nan)
    image_fpr = (accept & ~same).sum(1) / (~same).sum(1)
    identities = np.unique(labels)
    means = np.stack([unit[labels == c].mean(0) for c in identities])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    inter_scores = means @ means.T
    np.fill_diagonal(inter_scores, -np.inf)
    keep = min(50, len(identities) - 1)
    return {"threshold": threshold, "overall_fpr": fpr,
            "overall_tpr": (accept & same & ~eye).sum() / (same & ~eye).sum(),
            "tpr": np.array([np.mean(image_tpr[labels == c]) for c in identities]),
            "fpr": np.array([np.mean(image_fpr[labels == c]) for c in identities]),
            "intra": np.array([np.mean(unit[labels == c] @ means[k]) for k, c in enumerate(identities)]),
            "inter": np.sort(inter_scores, axis=1)[:, ::-1][:, :keep].mean(1)}


def clustered(num_identities, per_identity, dim, seed, noise=1.2):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_identities), per_identity))
    centres = rng.standard_normal((num_identities, dim))
    return (centres[labels] + noise * rng.standard_normal((labels.size, dim))).astype(np.float32), labels


@pytest.mark.parametrize("block_rows,target", [(None, 1e-2), (7, 1e-2), (5, 3e-3), (64, 0.2)])
def test_instance_protocol_matches_brute_force(block_rows, target):
    embeddings, labels = clustered(14, 6, 8, seed=1)
    actual = mixfairface.instance_protocol(embeddings, labels, target, block_rows=block_rows)
    expected = brute_force(embeddings, labels, target)
    assert actual["threshold"] == expected["threshold"]
    assert actual["overall_fpr"] == pytest.approx(expected["overall_fpr"], rel=1e-12)
    assert actual["overall_tpr"] == pytest.approx(expected["overall_tpr"], rel=1e-12)
    for key in ("tpr", "fpr", "intra", "inter"):
        np.testing.assert_allclose(actual[key], expected[key], rtol=1e-5, atol=1e-7, err_msg=key)
    assert np.array_equal(actual["identities"], np.arange(14))


def test_single_image_identities_have_no_tpr_and_many_identities_keep_top_50():
    embeddings, labels = clustered(60, 2, 6, seed=2)
    labels[0] = 60  # identity 60 has one image
    actual = mixfairface.instance_protocol(embeddings, labels, 1e-2, block_rows=9)
    expected = brute_force(embeddings, labels, 1e-2)
    assert np.isnan(actual["tpr"][-1]) and np.isnan(expected["tpr"][-1])
    np.testing.assert_allclose(actual["tpr"], expected["tpr"], rtol=1e-6)
    np.testing.assert_allclose(actual["inter"], expected["inter"], rtol=1e-5)


def test_report_names_protocol_and_races():
    embeddings, labels = clustered(8, 4, 6, seed=3)
    result = mixfairface.instance_protocol(embeddings, labels, 0.05)
    group_of = {label: ("race_a" if label < 4 else "race_b") for label in range(8)}
    report = mixfairface.instance_report(result, group_of, 0.05)
    assert report["summary"]["protocol"] == "MixFairFace instance protocol"
    assert [row[0] for row in report["rows"]] == ["race_a", "race_b"]
    assert report["rows"][0][3] == pytest.approx(np.mean(result["tpr"][:4]))
    assert report["rows"][0][4] == pytest.approx(np.std(result["tpr"][:4]))  # ddof 0


def test_usual_protocol_uses_sample_std():
    accuracies = {"African": 0.9, "Asian": 0.92, "Caucasian": 0.95, "Indian": 0.93}
    summary = group_accuracy_summary(accuracies, ddof=mixfairface.MixFairFaceRFW.std_ddof)
    assert summary["std"] == pytest.approx(np.std(list(accuracies.values()), ddof=1))
    assert summary["ser"] == pytest.approx(0.1 / 0.05)
