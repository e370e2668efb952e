"""Group and instance fairness against independent numpy computations on small fixed embeddings."""
import itertools
import math

import cv2
import numpy as np
import pytest

from plsc.data.transforms import build_transforms
from plsc.data.verification_bin import write_bin
from plsc.errors import PlscError
from plsc.metrics.fairness import (GroupVerification, InstanceFairness, group_accuracy_summary,
                                   instance_error_rates, open_identity_folder, read_group_file,
                                   skewed_error_ratio, summarise_by_group)
from plsc.metrics.verification import LFWAcc

DECODE_ONLY = build_transforms([{"DecodeImage": {"to_rgb": True, "channel_first": False}}])


# ---- group accuracy summary -------------------------------------------------------------------
def test_group_summary_mean_std_ser_by_hand():
    accuracies = {"African": 0.95, "Asian": 0.90, "Caucasian": 0.975, "Indian": 0.92}
    mean = (0.95 + 0.90 + 0.975 + 0.92) / 4
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies.values()) / 4)
    summary = group_accuracy_summary(accuracies)
    assert summary["mean"] == pytest.approx(mean)
    assert summary["std"] == pytest.approx(std)
    assert summary["ser"] == pytest.approx(0.10 / 0.025)  # worst error (Asian) / best error (Caucasian)


def test_ser_edge_cases():
    assert skewed_error_ratio([1.0, 0.9]) == float("inf")
    assert skewed_error_ratio([1.0, 1.0]) == 1.0
    assert skewed_error_ratio([0.8, 0.8, 0.8]) == pytest.approx(1.0)


def make_pairs(rng, pairs, noise, dim=12):
    issame = np.arange(pairs) % 2 == 0
    first = rng.normal(size=(pairs, dim))
    second = np.where(issame[:, None], first + noise * rng.normal(size=(pairs, dim)), rng.normal(size=(pairs, dim)))
    embeddings = np.empty((2 * pairs, dim))
    embeddings[0::2], embeddings[1::2] = first, second
    return embeddings, issame


def write_group_bins(directory, issame_by_group):
    """Tiny .bin files: the images are placeholders (the fake embedder never decodes them)."""
    placeholder = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    paths = {}
    for group, issame in issame_by_group.items():
        paths[group] = str(directory / f"{group}.bin")
        write_bin(paths[group], [placeholder] * (2 * len(issame)), issame)
    return paths


def test_group_verification_table_matches_lfw_accuracy_per_group(tmp_path):
    rng = np.random.default_rng(0)
    noise = {"A": 0.4, "B": 0.9, "C": 1.4}
    data = {group: make_pairs(rng, 120, level) for group, level in noise.items()}
    masked_data = {group: make_pairs(rng, 120, level * 1.5) for group, level in noise.items()}
    paths = write_group_bins(tmp_path, {group: issame for group, (_, issame) in data.items()})
    metric = GroupVerification(groups=paths, masked=True, mask_seed=3)
    calls = []

    def fake_embed(dataset, flip_test):
        masked = type(dataset).__name__ == "OneSideMaskedPairs"
        name = dataset.pairs.name if masked else dataset.name
        calls.append((name, masked, flip_test))
        return (masked_data if masked else data)[name][0]

    report = metric.evaluate_sets(fake_embed, DECODE_ONLY)
    assert calls == [(group, masked, True) for group in noise for masked in (False, True)]
    columns = report["columns"]
    expected = {}
    for row in report["rows"]:
        group = row[0]
        lfw = LFWAcc()(data[group][0], data[group][1])
        lfw_masked = LFWAcc()(masked_data[group][0], data[group][1])
        values = dict(zip(columns, row))
        assert values["pairs"] == 120
        assert values["accuracy"] == pytest.approx(lfw["accuracy"])
        assert values["std"] == pytest.approx(lfw["std"])
        assert values["threshold"] == pytest.approx(lfw["threshold"])
        assert values["masked accuracy"] == pytest.approx(lfw_masked["accuracy"])
        expected[group] = (lfw["accuracy"], lfw_masked["accuracy"])
    unmasked = np.array([a for a, _ in expected.values()])
    masked = np.array([m for _, m in expected.values()])
    summary = report["summary"]
    assert summary["mean accuracy"] == pytest.approx(unmasked.mean())
    assert summary["std across groups"] == pytest.approx(unmasked.std())
    assert summary["SER"] == pytest.approx((1 - unmasked).max() / (1 - unmasked).min())
    assert summary["masked mean accuracy"] == pytest.approx(masked.mean())
    assert summary["masked std across groups"] == pytest.approx(masked.std())
    assert summary["masked SER"] == pytest.approx((1 - masked).max() / (1 - masked).min())
    assert report["chart"]["series"]["unmasked"] == pytest.approx(dict(zip(noise, unmasked)))
    # Noisier groups score lower: the table tells the groups apart.
    assert unmasked[0] > unmasked[2]


def test_group_sets_may_be_converted_folders(tmp_path):
    from plsc.data.synthetic import write_verification_pairs

    write_verification_pairs(str(tmp_path / "pairs"), num_identities=4, num_pairs=6, group="group_b")
    metric = GroupVerification(groups={"dir": str(tmp_path / "pairs"), "list": str(tmp_path / "pairs" / "label.txt")})
    lines = (tmp_path / "pairs" / "label.txt").read_text().splitlines()
    expected = [line.split("\t")[2] == "1" for line in lines]
    for dataset in metric.pair_sets.values():
        assert list(dataset.issame) == expected and len(dataset) == 12


def test_group_verification_needs_groups_and_existing_sets(tmp_path):
    with pytest.raises(PlscError, match="groups"):
        GroupVerification(groups=None)
    with pytest.raises(PlscError, match="missing.bin"):
        GroupVerification(groups={"A": str(tmp_path / "missing.bin")})


# ---- instance fairness ------------------------------------------------------------------------
def dense_instance_reference(embeddings, labels, target_far):
    """Every pair, one at a time, in float64: threshold, per-identity FMR and FNMR."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    pairs = list(itertools.combinations(range(len(labels)), 2))
    score = {(i, j): float(unit[i] @ unit[j]) for i, j in pairs}
    impostor = sorted((score[p] for p in pairs if labels[p[0]] != labels[p[1]]), reverse=True)
    threshold = impostor[int(math.floor(target_far * len(impostor)))]
    fmr, fnmr = {}, {}
    for identity in sorted(set(labels)):
        mine = [k for k in range(len(labels)) if labels[k] == identity]
        others = len(labels) - len(mine)
        false_matches = sum(1 for i, j in pairs if (labels[i] == identity) != (labels[j] == identity)
                            and score[(i, j)] > threshold)
        fmr[identity] = false_matches / (len(mine) * others)
        own = [score[(i, j)] for i, j in pairs if labels[i] == identity and labels[j] == identity]
        fnmr[identity] = sum(s <= threshold for s in own) / len(own) if own else float("nan")
    return threshold, fmr, fnmr


def clustered_embeddings(rng, counts, spread, dim=16):
    labels = np.concatenate([[identity] * count for identity, count in counts.items()])
    centres = {identity: rng.normal(size=dim) for identity in counts}
    embeddings = np.stack([centres[label] + spread * rng.normal(size=dim) for label in labels])
    order = rng.permutation(len(labels))  # the rows arrive unsorted
    return embeddings[order], labels[order]


@pytest.mark.parametrize("block_rows", [1, 4, 13, None])
def test_blocked_rates_equal_dense_pairs(block_rows):
    rng = np.random.default_rng(11)
    counts = {3: 5, 7: 1, 10: 4, 11: 6, 20: 2, 21: 3, 30: 5}  # identity 7 has no genuine pair
    embeddings, labels = clustered_embeddings(rng, counts, spread=0.9)
    target_far = 0.05
    threshold, fmr, fnmr = dense_instance_reference(embeddings, labels, target_far)
    rates = instance_error_rates(embeddings, labels, target_far, block_rows=block_rows)
    assert rates["threshold"] == pytest.approx(threshold, abs=1e-5)
    assert list(rates["identities"]) == sorted(counts)
    assert list(rates["images"]) == [counts[identity] for identity in sorted(counts)]
    np.testing.assert_allclose(rates["fmr"], [fmr[identity] for identity in sorted(counts)], rtol=0, atol=1e-12)
    np.testing.assert_allclose(rates["fnmr_per_identity"], [fnmr[identity] for identity in sorted(counts)],
                               rtol=0, atol=1e-12, equal_nan=True)
    impostor_pairs = sum(a * b for a, b in itertools.combinations(counts.values(), 2))
    assert rates["far"] <= target_far
    assert rates["far"] == pytest.approx(sum(fmr[i] * counts[i] * (len(labels) - counts[i]) for i in counts)
                                         / 2 / impostor_pairs)


def test_threshold_lets_through_at_most_the_target_share_of_impostors():
    rng = np.random.default_rng(5)
    embeddings, labels = clustered_embeddings(rng, {k: 4 for k in range(40)}, spread=1.0, dim=8)
    for target_far in (1e-3, 1e-2, 0.1):
        rates = instance_error_rates(embeddings, labels, target_far, block_rows=16)
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        scores = unit @ unit.T
        upper = np.triu(np.ones_like(scores, dtype=bool), k=1)
        impostor = scores[upper & (labels[:, None] != labels[None, :])]
        allowed = math.floor(target_far * impostor.size)
        # Exactly `allowed` impostors lie above the threshold (scores are distinct).
        assert np.count_nonzero(impostor > rates["threshold"] + 1e-6) <= allowed
        assert np.count_nonzero(impostor >= rates["threshold"] - 1e-6) >= allowed + 1


def test_instance_rates_reject_bad_far():
    with pytest.raises(PlscError, match="target_far"):
        instance_error_rates(np.eye(4), [0, 0, 1, 1], target_far=0.0)
    with pytest.raises(PlscError, match="two identities"):
        instance_error_rates(np.eye(4), [0, 0, 0, 0], target_far=0.1)


def test_summarise_by_group_mean_and_worst():
    identities = np.array([4, 5, 6, 7, 8])
    values = np.array([0.1, 0.3, np.nan, 0.2, 0.05])
    group_of = {4: "x", 5: "y", 6: "x", 7: "x", 8: "y"}
    summary = summarise_by_group(identities, values, group_of)
    assert summary["x"] == {"identities": 3, "mean": pytest.approx(0.15), "worst": pytest.approx(0.2),
                            "worst_identity": 7}
    assert summary["y"] == {"identities": 2, "mean": pytest.approx(0.175), "worst": pytest.approx(0.3),
                            "worst_identity": 5}


def write_identity_folder(directory, labels, groups):
    (directory / "images").mkdir(parents=True)
    lines = []
    for index, label in enumerate(labels):
        name = f"images/{index:03d}.png"
        cv2.imwrite(str(directory / name), np.zeros((4, 4, 3), np.uint8))
        lines.append(f"{name}\t{label}\n")
    (directory / "label.txt").write_text("".join(lines))
    (directory / "groups.txt").write_text("".join(f"{label} {group}\n" for label, group in groups.items()))


def test_instance_fairness_report_per_group(tmp_path):
    rng = np.random.default_rng(3)
    counts = {0: 4, 1: 4, 2: 4, 3: 4, 4: 4, 5: 4}
    groups = {0: "tight", 1: "tight", 2: "tight", 3: "loose", 4: "loose", 5: "loose"}
    labels = np.concatenate([[label] * count for label, count in counts.items()])
    centres = rng.normal(size=(6, 16))
    spread = np.where(np.array([groups[label] for label in labels]) == "tight", 0.3, 1.2)
    embeddings = centres[labels] + spread[:, None] * rng.normal(size=(len(labels), 16))
    write_identity_folder(tmp_path, labels, groups)
    metric = InstanceFairness(image_root=str(tmp_path), cls_label_path=str(tmp_path / "label.txt"),
                              group_path=str(tmp_path / "groups.txt"), target_far="5e-2", flip_test=False)
    assert metric.target_far == 0.05
    report = metric.evaluate_sets(lambda dataset, flip: embeddings, DECODE_ONLY)
    threshold, fmr, fnmr = dense_instance_reference(embeddings, labels, 0.05)
    rows = {row[0]: dict(zip(report["columns"], row)) for row in report["rows"]}
    for group in ("tight", "loose"):
        members = [label for label in counts if groups[label] == group]
        assert rows[group]["identities"] == 3
        assert rows[group]["mean FMR"] == pytest.approx(np.mean([fmr[m] for m in members]))
        assert rows[group]["worst FNMR"] == pytest.approx(max(fnmr[m] for m in members))
        assert fnmr[rows[group]["worst FNMR id"]] == pytest.approx(rows[group]["worst FNMR"])
    assert rows["tight"]["mean FNMR"] <= rows["loose"]["mean FNMR"]
    assert report["summary"]["threshold (cosine)"] == pytest.approx(threshold, abs=1e-5)
    assert len(report["identities"]) == 6


def test_group_file_errors(tmp_path):
    write_identity_folder(tmp_path, [0, 0, 1, 1], {0: "a"})
    with pytest.raises(PlscError, match="no group for label 1"):
        open_identity_folder(str(tmp_path), str(tmp_path / "label.txt"), str(tmp_path / "groups.txt"))
    (tmp_path / "bad.txt").write_text("0 a\nzero b\n")
    with pytest.raises(PlscError, match="bad.txt:2"):
        read_group_file(str(tmp_path / "bad.txt"))
    dataset, group_of = open_identity_folder(str(tmp_path), str(tmp_path / "label.txt"))
    assert group_of == {0: "all", 1: "all"} and len(dataset) == 4
