"""1:N Recall@k against a sort-based numpy reference on small fixed embeddings."""
import cv2
import numpy as np
import pytest

from plsc.data.transforms import build_transforms
from plsc.errors import PlscError
from plsc.metrics.recall import Recall, recall_at_k, split_gallery_probes, true_match_ranks


def reference_recall(embeddings, labels, ks):
    """First image of each identity in the gallery; rank by sorting each probe's similarities."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    gallery, seen = [], set()
    for index, label in enumerate(labels):
        if label not in seen:
            seen.add(label)
            gallery.append(index)
    probes = [index for index in range(len(labels)) if index not in gallery]
    ranks = []
    for probe in probes:
        similarities = [float(unit[probe] @ unit[g]) for g in gallery]
        order = sorted(range(len(gallery)), key=lambda k: -similarities[k])
        ranks.append(1 + [labels[gallery[k]] for k in order].index(labels[probe]))
    ranks = np.array(ranks)
    return {k: float(np.mean(ranks <= k)) for k in ks}, ranks, probes


def noisy_identities(rng, counts, spread, dim=8):
    labels = np.concatenate([[label] * count for label, count in counts.items()])
    labels = labels[rng.permutation(len(labels))]
    centres = {label: rng.normal(size=dim) for label in counts}
    return np.stack([centres[label] + spread * rng.normal(size=dim) for label in labels]), labels


def test_split_takes_each_identity_first_image_as_gallery():
    labels = np.array([5, 3, 5, 9, 3, 3, 9, 1])
    gallery, probes = split_gallery_probes(labels)
    assert list(gallery) == [0, 1, 3, 7]
    assert list(probes) == [2, 4, 5, 6]


@pytest.mark.parametrize("block_rows", [1, 7, 4096])
def test_ranks_and_recall_match_sorting(block_rows):
    rng = np.random.default_rng(0)
    embeddings, labels = noisy_identities(rng, {k: 1 + k % 4 for k in range(30)}, spread=1.0)
    expected, expected_ranks, probes = reference_recall(embeddings, labels, (1, 5, 10))
    gallery, probe_index = split_gallery_probes(labels)
    assert list(probe_index) == probes
    ranks = true_match_ranks(embeddings[gallery], labels[gallery], embeddings[probe_index], labels[probe_index],
                             block_rows=block_rows)
    assert np.array_equal(ranks, expected_ranks)
    assert recall_at_k(ranks, (1, 5, 10)) == pytest.approx(expected)
    assert 0 < expected[1] < expected[5] < 1  # a set where the figures are informative


def test_probe_without_gallery_identity_is_an_error():
    gallery = np.eye(3)
    with pytest.raises(PlscError, match="no gallery"):
        true_match_ranks(gallery, np.array([0, 1, 2]), np.eye(3)[:1], np.array([4]))


def write_identity_folder(directory, labels, groups):
    (directory / "images").mkdir(parents=True)
    lines = []
    for index, label in enumerate(labels):
        cv2.imwrite(str(directory / f"images/{index:03d}.png"), np.zeros((4, 4, 3), np.uint8))
        lines.append(f"images/{index:03d}.png\t{label}\n")
    (directory / "label.txt").write_text("".join(lines))
    (directory / "groups.txt").write_text("".join(f"{label} {group}\n" for label, group in groups.items()))


def test_recall_metric_reports_per_group(tmp_path):
    rng = np.random.default_rng(4)
    counts = {k: 3 + k % 3 for k in range(24)}
    groups = {k: ("north" if k < 12 else "south") for k in counts}
    embeddings, labels = noisy_identities(rng, counts, spread=0.9)
    # The south group is noisier: its probes should be found less often.
    south = np.array([groups[label] == "south" for label in labels])
    embeddings[south] += 0.8 * rng.normal(size=(int(south.sum()), embeddings.shape[1]))
    write_identity_folder(tmp_path, labels, groups)
    metric = Recall(image_root=str(tmp_path), cls_label_path=str(tmp_path / "label.txt"),
                    group_path=str(tmp_path / "groups.txt"), ks=[1, 5], flip_test=False)
    transform = build_transforms([{"DecodeImage": None}])
    report = metric.evaluate_sets(lambda dataset, flip: embeddings, transform)
    overall, ranks, probes = reference_recall(embeddings, labels, (1, 5))
    rows = {row[0]: dict(zip(report["columns"], row)) for row in report["rows"]}
    for group in ("north", "south"):
        members = np.array([groups[labels[p]] == group for p in probes])
        assert rows[group]["probes"] == int(members.sum())
        assert rows[group]["recall@1"] == pytest.approx(np.mean(ranks[members] <= 1))
        assert rows[group]["recall@5"] == pytest.approx(np.mean(ranks[members] <= 5))
    assert report["summary"]["recall@1"] == pytest.approx(overall[1])
    assert report["summary"]["recall@5"] == pytest.approx(overall[5])
    assert report["summary"]["probes"] == len(probes)
    assert rows["north"]["recall@1"] > rows["south"]["recall@1"]


def test_recall_rejects_bad_ks(tmp_path):
    write_identity_folder(tmp_path, [0, 0, 1, 1], {0: "a", 1: "b"})
    with pytest.raises(PlscError, match="ks"):
        Recall(image_root=str(tmp_path), cls_label_path=str(tmp_path / "label.txt"), ks=[0])
