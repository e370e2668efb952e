"""IJB template pooling, pair scores and 1:N search against plain-loop references."""
import math
from collections import defaultdict

import numpy as np
import pytest

from plsc.errors import PlscError
from plsc.metrics import ijb


def random_protocol(seed, num_images=300, num_templates=25, dim=8):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_images, dim)).astype(np.float32)
    templates = rng.choice(np.arange(100, 100 + 3 * num_templates, 3), size=num_images)
    medias = rng.integers(5000, 5012, size=num_images)  # media ids shared across templates
    faceness = rng.uniform(0.5, 1.0, size=num_images).astype(np.float32)
    return features, templates, medias, faceness


def loop_pool(features, templates, medias, faceness, keep_norm):
    """Reference: dict template -> dict media -> list of (weighted) features; mean, sum, normalise."""
    groups = defaultdict(lambda: defaultdict(list))
    for feature, template, media, score in zip(features, templates, medias, faceness):
        feature = feature.astype(np.float64)
        if not keep_norm:
            feature = feature / np.linalg.norm(feature)
        groups[template][media].append(feature * score)
    pooled = {}
    for template, by_media in groups.items():
        total = sum(np.mean(members, axis=0) for members in by_media.values())
        pooled[template] = total / np.linalg.norm(total)
    return pooled


@pytest.mark.parametrize("use_faceness,keep_norm", [(True, True), (False, True), (True, False)])
def test_pooling_matches_loop(use_faceness, keep_norm):
    features, templates, medias, faceness = random_protocol(0)
    weights = faceness if use_faceness else np.ones_like(faceness)
    template_ids, pooled = ijb.pool_templates(features, templates, medias,
                                              faceness if use_faceness else None, keep_norm)
    reference = loop_pool(features, templates, medias, weights, keep_norm)
    assert template_ids.tolist() == sorted(reference)
    assert pooled.dtype == np.float32
    for row, template in enumerate(template_ids):
        np.testing.assert_allclose(pooled[row], reference[template], atol=1e-5)


def loop_scores(template_ids, features, pairs):
    index = {template: row for row, template in enumerate(template_ids)}
    return np.array([features[index[a]] @ features[index[b]] for a, b in pairs])


@pytest.mark.parametrize("fill,block_bytes", [(0.0, 1 << 30), (0.0, 200), (math.inf, 200), (1 / 128, 400)])
def test_verification_scores_match_loop(monkeypatch, fill, block_bytes):
    # fill 0 forces the dense Gram path, inf the gather path; tiny block_bytes forces many blocks.
    monkeypatch.setattr(ijb, "DENSE_BLOCK_MIN_FILL", fill)
    monkeypatch.setattr(ijb, "GATHER_CHUNK_PAIRS", 7)
    features, templates, medias, faceness = random_protocol(1)
    template_ids, pooled = ijb.pool_templates(features, templates, medias, faceness)
    rng = np.random.default_rng(2)
    pairs = rng.choice(template_ids, size=(500, 2))
    scores = ijb.verification_scores(template_ids, pooled, pairs[:, 0], pairs[:, 1],
                                     max_block_bytes=block_bytes)
    np.testing.assert_allclose(scores, loop_scores(template_ids, pooled, pairs), atol=1e-5)


def test_unknown_template_in_pairs_is_a_user_error():
    template_ids = np.array([1, 2, 3])
    features = np.eye(3, dtype=np.float32)
    with pytest.raises(PlscError, match=r"\[7\]"):
        ijb.verification_scores(template_ids, features, np.array([1, 7]), np.array([2, 3]))


def brute_force_identification(gallery, gallery_subjects, probes, probe_subjects, ranks, fpirs):
    subjects = sorted(set(gallery_subjects.tolist()))
    mated_ranks, mated_scores, non_mated_top = [], [], []
    for probe, subject in zip(probes, probe_subjects):
        per_subject = {s: max(float(probe @ g) for g, gs in zip(gallery, gallery_subjects) if gs == s)
                       for s in subjects}
        if subject in per_subject:
            own = per_subject[subject]
            mated_ranks.append(1 + sum(score > own for score in per_subject.values()))
            mated_scores.append(own)
        else:
            non_mated_top.append(max(per_subject.values()))
    cmc = {k: np.mean([r <= k for r in mated_ranks]) for k in ranks}
    tpir = {}
    for target in fpirs:
        allowed = target * len(non_mated_top)
        if allowed < 1 - 1e-9:
            tpir[target] = math.nan
            continue
        # lowest threshold (accept score > t) whose false alarms stay within the allowance
        candidates = sorted(non_mated_top + [-math.inf])
        threshold = next(t for t in candidates if sum(s > t for s in non_mated_top) <= allowed + 1e-9)
        tpir[target] = np.mean([r == 1 and s > threshold for r, s in zip(mated_ranks, mated_scores)])
    return cmc, tpir, len(mated_ranks), len(non_mated_top)


def test_identification_matches_brute_force():
    rng = np.random.default_rng(3)
    dim, num_subjects = 6, 30
    centres = ijb.l2_normalise(rng.normal(size=(num_subjects, dim)))
    gallery_subjects = np.repeat(np.arange(15), 2)  # two gallery templates per enrolled subject
    gallery = ijb.l2_normalise(centres[gallery_subjects] + 0.6 * rng.normal(size=(30, dim)))
    probe_subjects = rng.integers(0, num_subjects, size=120)  # subjects 15..29 are not enrolled
    probes = ijb.l2_normalise(centres[probe_subjects] + 0.6 * rng.normal(size=(120, dim)))
    ranks, fpirs = (1, 2, 5, 10), (0.01, 0.05, 0.1, 0.5)
    result = ijb.open_set_identification(gallery, gallery_subjects, probes, probe_subjects, ranks, fpirs)
    cmc, tpir, num_mated, num_non_mated = brute_force_identification(
        gallery, gallery_subjects, probes, probe_subjects, ranks, fpirs)
    assert (result["num_mated"], result["num_non_mated"]) == (num_mated, num_non_mated)
    for k in ranks:
        assert result["cmc"][k] == pytest.approx(cmc[k])
    for target in fpirs:
        if math.isnan(tpir[target]):
            assert math.isnan(result["tpir"][target])
        else:
            assert result["tpir"][target] == pytest.approx(tpir[target]), target
    assert 0 < result["cmc"][1] < result["cmc"][10] <= 1


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_read_protocol_files(tmp_path):
    meta = tmp_path / "meta"
    write(meta / "ijbc_face_tform_id_media.txt", "1.jpg 1 10\n2.jpg 1 11\n3.jpg 2 12\n")
    write(meta / "ijbc_name_5pts_score.txt", "".join(
        f"{i}.jpg " + " ".join(str(i * 10 + k) for k in range(10)) + f" 0.{i}\n" for i in (1, 2, 3)))
    write(meta / "ijbc_template_pair_label.txt", "1 2 0\n2 1 1\n")
    with pytest.raises(PlscError, match=r"missing 1:N protocol file .*ijbc_1N_gallery_G1.csv \(and 2 more\)"):
        ijb.read_ijb_protocol(tmp_path, "IJBC")
    protocol = ijb.read_ijb_protocol(tmp_path, "IJBC", one_to_n=False)
    assert protocol.image_names == ["1.jpg", "2.jpg", "3.jpg"]
    assert protocol.templates.tolist() == [1, 1, 2] and protocol.medias.tolist() == [10, 11, 12]
    np.testing.assert_allclose(protocol.landmarks[1], np.arange(20, 30).reshape(5, 2))
    np.testing.assert_allclose(protocol.faceness, [0.1, 0.2, 0.3])
    assert protocol.pairs.tolist() == [[1, 2], [2, 1]] and protocol.labels.tolist() == [0, 1]
    assert protocol.one_to_n == {}

    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    write(meta / "ijbc_1N_gallery_G1.csv", header + "1,7,img/1.jpg\n1,7,img/2.jpg\n")
    write(meta / "ijbc_1N_gallery_G2.csv", header + "2,8,img/3.jpg\n")
    write(meta / "ijbc_1N_probe_mixed.csv", header + "2,8,img/3.jpg\n")
    protocol = ijb.read_ijb_protocol(tmp_path, "IJBC")
    assert sorted(protocol.one_to_n) == ["G1", "G2", "probe"]
    template_ids, subject_ids = ijb.read_template_subjects(protocol.one_to_n["G1"])
    assert template_ids.tolist() == [1] and subject_ids.tolist() == [7]

    # the PLSC file name wins when both exist
    write(meta / "ijbc_face_tid_mid.txt", "1.jpg 5 10\n2.jpg 5 11\n3.jpg 6 12\n")
    assert ijb.read_ijb_protocol(tmp_path, "IJBC").templates.tolist() == [5, 5, 6]


def test_ijbb_galleries_are_s1_and_s2(tmp_path):
    meta = tmp_path / "meta"
    write(meta / "ijbb_face_tid_mid.txt", "1.jpg 1 10\n")
    write(meta / "ijbb_name_5pts_score.txt", "1.jpg" + " 1" * 10 + " 0.9\n")
    write(meta / "ijbb_template_pair_label.txt", "1 1 1\n")
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    write(meta / "ijbb_1N_gallery_S1.csv", header + "1,7,a.jpg\n")
    write(meta / "ijbb_1N_probe_mixed.csv", header + "1,7,a.jpg\n")
    with pytest.raises(PlscError, match=r"missing 1:N protocol file \S*ijbb_1N_gallery_S2.csv;"):
        ijb.read_ijb_protocol(tmp_path, "IJBB")
    write(meta / "ijbb_1N_gallery_S2.csv", header + "2,8,b.jpg\n")
    assert list(ijb.read_ijb_protocol(tmp_path, "IJBB").one_to_n) == ["S1", "S2", "probe"]


def test_protocol_errors_name_the_file(tmp_path):
    meta = tmp_path / "meta"
    with pytest.raises(PlscError, match="ijbb_face_tid_mid.txt"):
        ijb.read_ijb_protocol(tmp_path, "IJBB")
    with pytest.raises(PlscError, match="'IJBA' is not IJBC or IJBB"):
        ijb.read_ijb_protocol(tmp_path, "IJBA")
    write(meta / "ijbc_face_tid_mid.txt", "1.jpg 1 10\n2.jpg 1 11\n")
    write(meta / "ijbc_name_5pts_score.txt", "1.jpg" + " 1" * 10 + " 0.9\n")
    with pytest.raises(PlscError, match="ijbc_name_5pts_score.txt: line 1 does not have"):
        write(meta / "ijbc_name_5pts_score.txt", "1.jpg 1 2 0.9\n")
        ijb.read_ijb_protocol(tmp_path, "IJBC", one_to_n=False)
    write(meta / "ijbc_name_5pts_score.txt", "1.jpg" + " 1" * 10 + " 0.9\n3.jpg" + " 1" * 10 + " 0.9\n")
    with pytest.raises(PlscError, match="differs .* at line 2"):
        ijb.read_ijb_protocol(tmp_path, "IJBC", one_to_n=False)
    write(meta / "ijbc_name_5pts_score.txt", "1.jpg" + " 1" * 10 + " 0.9\n2.jpg" + " 1" * 10 + " 0.9\n")
    write(meta / "ijbc_template_pair_label.txt", "1 2\n")
    with pytest.raises(PlscError, match="ijbc_template_pair_label.txt: expected 3 columns"):
        ijb.read_ijb_protocol(tmp_path, "IJBC", one_to_n=False)
    bad_csv = write(meta / "g.csv", "TEMPLATE_ID,SUBJECT_ID\n1,2\n1,3\n")
    with pytest.raises(PlscError, match="template 1 is listed with several subjects"):
        ijb.read_template_subjects(bad_csv)


def test_one_to_n_searches_the_mixed_probes_in_both_galleries(tmp_path):
    rng = np.random.default_rng(5)
    template_ids = np.arange(10, 10 + 3 * 40, 3)  # 40 templates, sorted as pool_templates returns them
    subjects = rng.integers(0, 12, size=40)
    features = ijb.l2_normalise(rng.normal(size=(12, 8))[subjects] + 0.7 * rng.normal(size=(40, 8)))
    first_template = {s: i for i, s in reversed(list(enumerate(subjects)))}
    gallery = {"G1": [i for s, i in first_template.items() if s % 2 == 0],
               "G2": [i for s, i in first_template.items() if s % 2 == 1]}
    probes = [i for i in range(40) if i not in first_template.values()]
    paths = {}
    for name, rows in {**gallery, "probe": probes}.items():
        # one csv row per image: each template listed twice, as the release lists its images
        lines = [f"{template_ids[i]},{subjects[i]},img/{k}.jpg" for i in rows for k in range(2)]
        paths[name] = write(tmp_path / f"{name}.csv", "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "\n".join(lines) + "\n")
    ranks, fpirs = (1, 5), (0.1, 0.5)
    result = ijb.one_to_n(template_ids, features, paths, ranks, fpirs, convention="open_set")
    assert result["convention"] == "open_set"
    for name in ("G1", "G2"):
        rows = gallery[name]
        cmc, tpir, _, _ = brute_force_identification(features[rows], subjects[rows], features[probes],
                                                     subjects[probes], ranks, fpirs)
        for k in ranks:
            assert result[name]["cmc"][k] == pytest.approx(cmc[k])
            assert result["mean"]["cmc"][k] == pytest.approx(
                (result["G1"]["cmc"][k] + result["G2"]["cmc"][k]) / 2)
        for target in fpirs:
            assert result[name]["tpir"][target] == pytest.approx(tpir[target], nan_ok=True)

    write(paths["probe"], "TEMPLATE_ID,SUBJECT_ID\n9999,1\n")
    with pytest.raises(PlscError, match=r"probe.csv: 1 template id\(s\) have no images, e.g. \[9999\]"):
        ijb.one_to_n(template_ids, features, paths)


@pytest.mark.parametrize("max_lookup_id", [0, 1 << 24])  # binary search, and the table path
def test_template_positions_both_paths(monkeypatch, max_lookup_id):
    monkeypatch.setattr(ijb, "MAX_LOOKUP_ID", max_lookup_id)
    template_ids = np.array([3, 8, 20, 21, 400])
    wanted = np.array([400, 3, 21, 21, 8, 20])
    assert ijb.template_positions(template_ids, wanted).tolist() == [4, 0, 3, 3, 1, 2]
    for bad in ([0], [401], [-5], [9]):
        with pytest.raises(PlscError, match=rf"\[{bad[0]}\]"):
            ijb.template_positions(template_ids, np.array([3, *bad]))


def insightface_ijb_1n(probe_features, probe_subjects, gallery_features, gallery_subjects, ranks, fpirs):
    """A numpy port of what insightface's ijb_1n evaluation computes: one gallery template per subject,
    mask = the mate's gallery row, top-k from argsort, non-mate scores heap-sorted, k = ceil(Q * far)."""
    mask = []
    for subject in probe_subjects:
        rows = [row for row, gallery_subject in enumerate(gallery_subjects) if gallery_subject == subject]
        assert len(rows) == 1
        mask.append(rows[0])
    similarity = probe_features @ gallery_features.T
    order = np.argsort(-similarity, axis=1)
    num_probes = len(mask)
    cmc = {k: sum(mask[i] in order[i, :k] for i in range(num_probes)) / num_probes for k in ranks}
    positives = np.array([similarity[i, mask[i]] for i in range(num_probes)])
    for i in range(num_probes):
        similarity[i, mask[i]] = -2.0
    negatives = sorted(similarity[similarity > -2.0].tolist(), reverse=True)
    tpir = {}
    for far in fpirs:
        threshold = negatives[math.ceil(num_probes * far) - 1]
        tpir[far] = np.sum(positives > threshold) / num_probes
    return cmc, tpir


def mixed_one_to_n_files(tmp_path, seed, num_subjects=24, probes_per_subject=3, noise=0.8):
    """Templates and G1 / G2 / probe csvs in the IJB-C layout: subject s enrolled once, in G1 (even) or G2."""
    rng = np.random.default_rng(seed)
    dim = 8
    centres = rng.normal(size=(num_subjects, dim))
    subjects = np.r_[np.arange(num_subjects), np.repeat(np.arange(num_subjects), probes_per_subject)]
    features = ijb.l2_normalise(centres[subjects] + noise * rng.normal(size=(subjects.size, dim)))
    template_ids = 5 + 2 * np.arange(subjects.size)
    rows = {"G1": np.arange(0, num_subjects, 2), "G2": np.arange(1, num_subjects, 2),
            "probe": np.arange(num_subjects, subjects.size)}
    paths = {}
    for name, members in rows.items():
        lines = [f"{template_ids[i]},{100 + subjects[i]},img/{i}.jpg" for i in members]
        paths[name] = write(tmp_path / f"{name}.csv", "TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + "\n".join(lines) + "\n")
    return template_ids, features, subjects, rows, paths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_insightface_one_to_n_matches_a_port_of_ijb_1n(tmp_path, seed):
    template_ids, features, subjects, rows, paths = mixed_one_to_n_files(tmp_path, seed)
    ranks, fpirs = (1, 5, 10), (0.01, 0.05, 0.1, 0.3)
    result = ijb.one_to_n(template_ids, features, paths, ranks, fpirs)
    assert result["convention"] == "insightface" and result["galleries"] == "G1+G2"
    gallery = np.r_[rows["G1"], rows["G2"]]
    cmc, tpir = insightface_ijb_1n(features[rows["probe"]], subjects[rows["probe"]], features[gallery],
                                   subjects[gallery], ranks, fpirs)
    assert result["num_probes"] == rows["probe"].size and result["num_gallery_subjects"] == gallery.size
    for k in ranks:
        assert result["cmc"][k] == pytest.approx(cmc[k], abs=1e-12)
    for far in fpirs:
        assert result["tpir"][far] == pytest.approx(tpir[far], abs=1e-12)
    # The open-set figures of the same scores are lower: a hit needs rank 1 in one half of the gallery.
    open_set = ijb.one_to_n(template_ids, features, paths, ranks, fpirs, convention="open_set")
    assert open_set["mean"]["cmc"][1] != pytest.approx(result["cmc"][1])


def test_insightface_one_to_n_without_a_rank_1_requirement():
    # Probe 0's mate scores 0.8 but a non-mate 0.9 (rank 2); probe 1's mate 0.7 is rank 1. Non-mate
    # scores sorted: 0.9, 0.5, 0.2, 0.1; FPIR 0.5 of 2 probes -> k = 1 -> threshold 0.9 -> no probe above;
    # FPIR 1.0 -> k = 2 -> threshold 0.5 -> both mates above it, one of them not at rank 1.
    gallery_subjects = np.array([10, 11, 12])
    scores = np.array([[0.8, 0.9, 0.1], [0.5, 0.7, 0.2]])
    gallery = np.eye(3)
    probes = scores  # probe @ identity gallery = the scores themselves
    result = ijb.insightface_identification(gallery, gallery_subjects, probes, np.array([10, 11]),
                                            ranks=(1, 2), fpirs=(0.5, 1.0))
    assert result["cmc"] == {1: 0.5, 2: 1.0}
    assert result["tpir"] == {0.5: 0.0, 1.0: 1.0}
    assert result["threshold"][1.0] == pytest.approx(0.5)
    with pytest.raises(PlscError, match="1 probe\\(s\\) of subjects missing from the joined gallery, e.g. subject 13"):
        ijb.insightface_identification(gallery, gallery_subjects, probes, np.array([10, 13]))
