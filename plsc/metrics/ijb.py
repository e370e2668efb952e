"""IJB-B / IJB-C protocol maths: template pooling, 1:1 pair scores and 1:N identification.

Pooling follows the standard IJB evaluation: each image feature (embedding of the image plus
embedding of its horizontal flip) is optionally stripped of its norm and weighted by the face
detector's score; images of one media (a photo, or the frames of one video) are averaged; the
media means of a template are summed; the template is L2-normalised; a pair score is the dot
product of two templates. Everything is vectorised so the full IJB-C protocol (469,375 images,
23,124 templates, 15.7M pairs) runs in seconds; tools/bench_ijbc.py measures it.
"""
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse

from plsc.errors import PlscError

# Measured on a 2-core x86 machine: a dense Gram entry costs ~10 ns
# (OpenBLAS sgemm, 512-d), a gathered pair ~1.8 us (two row gathers + a row-wise dot). A block of
# templates is therefore scored through a dense Gram matrix when more than ~1/128 of its entries
# are wanted pairs, and through per-pair gathers otherwise.
DENSE_BLOCK_MIN_FILL = 1.0 / 128
GATHER_CHUNK_PAIRS = 100_000
MAX_LOOKUP_ID = 1 << 24  # ids below this are mapped through a table (at most 128 MB of int64)


def l2_normalise(features, eps=1e-12):
    """Rows scaled to unit L2 norm (zero rows stay zero): [N, D] -> [N, D]."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, eps)


def pool_templates(image_features, templates, medias, faceness=None, keep_norm=True):
    """Pool image features into L2-normalised template features.

    image_features: [N, D] (flip-summed); templates, medias: [N] int ids; faceness: [N] detector
    scores or None (no weighting). keep_norm=False L2-normalises every image feature first (the
    "N0" mode; PLSC's default "N1" keeps the norm as a quality signal).
    Returns template_ids [T] (sorted, unique) and template_features [T, D] float32.
    """
    features = np.asarray(image_features, dtype=np.float32)
    if not keep_norm:
        features = l2_normalise(features)
    templates = np.asarray(templates)
    medias = np.asarray(medias)
    template_ids, template_index = np.unique(templates, return_inverse=True)
    _, media_index = np.unique(medias, return_inverse=True)
    # One group per (template, media) pair; an image's weight is 1 / (images in its group), so a
    # weighted sum over a template's images equals the sum of its media means.
    group_key = template_index.astype(np.int64) * (int(media_index.max()) + 1) + media_index
    _, group_index, group_size = np.unique(group_key, return_inverse=True, return_counts=True)
    weights = 1.0 / group_size[group_index]
    if faceness is not None:
        weights = weights * np.asarray(faceness, dtype=np.float64)
    num_images = features.shape[0]
    pooling = scipy.sparse.csr_matrix(
        (weights.astype(np.float32), (template_index, np.arange(num_images))),
        shape=(template_ids.size, num_images))
    template_features = np.asarray(pooling @ features, dtype=np.float32)
    return template_ids, l2_normalise(template_features)


def _lookup_positions(template_ids, wanted_ids):
    """Positions through a table indexed by id, when ids are small non-negative integers, else None.

    IJB ids are below 200k; a table gather is ~10x faster than a binary search over 15.7M pairs.
    Unknown ids come back as position 0 and are caught by the caller's comparison.
    """
    if not (np.issubdtype(template_ids.dtype, np.integer) and np.issubdtype(wanted_ids.dtype, np.integer)):
        return None
    if template_ids.size == 0 or template_ids[0] < 0 or template_ids[-1] >= MAX_LOOKUP_ID:
        return None
    table = np.zeros(int(template_ids[-1]) + 1, dtype=np.int64)
    table[template_ids] = np.arange(template_ids.size)
    inside = (wanted_ids >= 0) & (wanted_ids <= template_ids[-1])
    return table[np.where(inside, wanted_ids, 0)]


def template_positions(template_ids, wanted_ids, source="pairs"):
    """Row of each wanted id in the sorted `template_ids`: [K] int64; PlscError for unknown ids."""
    wanted_ids = np.asarray(wanted_ids)
    positions = _lookup_positions(template_ids, wanted_ids)
    if positions is None:
        positions = np.minimum(np.searchsorted(template_ids, wanted_ids), template_ids.size - 1)
    unknown = template_ids[positions] != wanted_ids
    if unknown.any():
        missing = np.unique(wanted_ids[unknown])
        raise PlscError(f"{source}: {missing.size} template id(s) have no images, e.g. "
                        f"{missing[:5].tolist()}")
    return positions.astype(np.int64)


def _gathered_dots(template_features, rows, cols, out):
    """out[i] = <F[rows[i]], F[cols[i]]>, in chunks to bound the gathered copies."""
    for start in range(0, rows.size, GATHER_CHUNK_PAIRS):
        stop = start + GATHER_CHUNK_PAIRS
        first = template_features[rows[start:stop]]
        second = template_features[cols[start:stop]]
        out[start:stop] = np.einsum("ij,ij->i", first, second)


def _block_scores(template_features, block_start, block_features, rows, cols):
    """Scores of pairs whose first template lies in one block: [K] float32."""
    needed = np.zeros(template_features.shape[0], dtype=bool)
    needed[cols] = True
    column_ids = np.flatnonzero(needed)
    scores = np.empty(rows.size, dtype=np.float32)
    if rows.size < DENSE_BLOCK_MIN_FILL * block_features.shape[0] * column_ids.size:
        _gathered_dots(template_features, rows, cols, scores)
        return scores
    column_slot = np.zeros(template_features.shape[0], dtype=np.int64)
    column_slot[column_ids] = np.arange(column_ids.size)
    gram = block_features @ template_features[column_ids].T
    scores[:] = gram[rows - block_start, column_slot[cols]]
    return scores


def verification_scores(template_ids, template_features, pairs_t1, pairs_t2,
                        max_block_bytes=256 << 20, progress=None):
    """Dot product of the two templates of every pair: [P] float32.

    template_ids: [T] sorted; template_features: [T, D] L2-normalised; pairs_t1, pairs_t2: [P] ids.
    Pairs are scored in blocks of first templates; each block's Gram slice stays under
    `max_block_bytes`. `progress` (e.g. a tqdm bar) gets `.update(pairs_done)` after each block.
    """
    template_features = np.ascontiguousarray(template_features, dtype=np.float32)
    rows = template_positions(template_ids, pairs_t1, "pairs (first template)")
    cols = template_positions(template_ids, pairs_t2, "pairs (second template)")
    if rows.size == 0:
        return np.empty(0, dtype=np.float32)
    num_templates = template_features.shape[0]
    block_rows = max(1, min(num_templates, max_block_bytes // (4 * num_templates)))
    block_of_pair = rows // block_rows
    # A stable counting sort by block (radix sort for small unsigned ints) groups the pairs.
    order = np.argsort(block_of_pair.astype(np.min_scalar_type(block_of_pair.max())), kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(block_of_pair))])
    scores = np.empty(rows.size, dtype=np.float32)
    for block, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if lo == hi:
            continue
        block_start = block * block_rows
        members = order[lo:hi]
        scores[members] = _block_scores(
            template_features, block_start, template_features[block_start:block_start + block_rows],
            rows[members], cols[members])
        if progress is not None:
            progress.update(int(hi - lo))
    return scores


def subject_scores(probe_features, gallery_features, gallery_subjects):
    """Best gallery-template score per gallery subject: (subjects [S] sorted, scores [Q, S])."""
    subjects, subject_index = np.unique(np.asarray(gallery_subjects), return_inverse=True)
    order = np.argsort(subject_index, kind="stable")
    starts = np.searchsorted(subject_index[order], np.arange(subjects.size))
    template_scores = np.asarray(probe_features, np.float32) @ np.asarray(gallery_features, np.float32)[order].T
    return subjects, np.maximum.reduceat(template_scores, starts, axis=1)


# The two 1:N conventions. Published IJB-B / IJB-C 1:N figures come from insightface's evaluation
# script, so that is the default; plsc's open-set search is stricter and kept for comparison.
ONE_TO_N_CONVENTIONS = {
    "insightface": ("insightface's ijb_1n: both galleries joined into one, every probe mated; "
                    "rank-k over gallery subjects; TPIR@FPIR f = share of probes whose mate scores above "
                    "the ceil(Q*f)-th highest non-mate score of the Q probes; no rank-1 requirement"),
    "open_set": ("plsc open set: each gallery searched alone (probes of its absent subjects are non-mated), "
                 "threshold from the non-mated probes' top scores, a hit needs rank 1; mean of the galleries"),
}


def insightface_identification(gallery_features, gallery_subjects, probe_features, probe_subjects,
                               ranks=(1, 5, 10), fpirs=(0.01, 0.1), source="1:N probes"):
    """insightface's 1:N (ijb_1n): closed-set ranks and TPIR at FPIR counted over mated probes.

    gallery_features: [G, D], probe_features: [Q, D] L2-normalised; *_subjects: [G], [Q]. Every probe's
    subject must be in the gallery (a PlscError naming `source` otherwise). A gallery subject scores
    its best template (the releases have one per subject, so this is insightface's per-template score).
    A probe's rank is 1 + the subjects scoring strictly above its mate. For FPIR f the threshold is
    the k-th highest of the Q * (S - 1) non-mate scores, k = ceil(Q * f); TPIR is the share of probes
    whose mate score exceeds it, whatever their rank. k outside [1, Q * (S - 1)] gives NaN.
    Returns {"cmc": {rank: rate}, "tpir": {fpir: rate}, "threshold": {fpir: score}, "num_probes": Q,
    "num_gallery_subjects": S}.
    """
    subjects, scores = subject_scores(probe_features, gallery_features, gallery_subjects)
    probe_subjects = np.asarray(probe_subjects)
    absent = ~np.isin(probe_subjects, subjects)
    if absent.any():
        raise PlscError(f"{source}: {int(absent.sum())} probe(s) of subjects missing from the joined "
                        f"gallery, e.g. subject {probe_subjects[absent][0]}; insightface's 1:N needs every "
                        f"probe mated (use the open_set convention otherwise)")
    num_probes = probe_subjects.size
    mate_column = np.searchsorted(subjects, probe_subjects)
    mate_scores = scores[np.arange(num_probes), mate_column]
    ranks_of_mates = 1 + np.sum(scores > mate_scores[:, None], axis=1)
    nan = float("nan")
    cmc = {k: float(np.mean(ranks_of_mates <= k)) if num_probes else nan for k in ranks}
    scores[np.arange(num_probes), mate_column] = -np.inf  # what remains are the non-mate scores
    non_mate = scores.reshape(-1)
    num_non_mate = num_probes * (subjects.size - 1)
    tpir, thresholds = {}, {}
    for target in fpirs:
        # The script's own arithmetic, float product then ceil: 0.1 * 30 counts 4, not 3.
        count = math.ceil(num_probes * target)
        if count < 1 or count > num_non_mate:
            tpir[target] = thresholds[target] = nan
            continue
        threshold = float(np.partition(non_mate, non_mate.size - count)[non_mate.size - count])
        thresholds[target] = threshold
        tpir[target] = float(np.mean(mate_scores > threshold))
    return {"cmc": cmc, "tpir": tpir, "threshold": thresholds, "num_probes": int(num_probes),
            "num_gallery_subjects": int(subjects.size)}


def open_set_identification(gallery_features, gallery_subjects, probe_features, probe_subjects,
                            ranks=(1, 5, 10), fpirs=(0.01, 0.1)):
    """plsc's open-set 1:N search: CMC at `ranks` (mated probes) and TPIR at `fpirs`.

    gallery_features: [G, D], probe_features: [Q, D] L2-normalised templates; *_subjects: [G], [Q].
    A probe whose subject has no gallery template is non-mated. A mated probe's rank is 1 + the
    number of gallery subjects scoring strictly higher than its own. The threshold for a target
    FPIR f is the (floor(f * n) + 1)-th highest top score among the n non-mated probes (scores must
    exceed it), so at most f * n of them raise an alarm; TPIR is the share of mated probes found at
    rank 1 above that threshold. f < 1 / n gives NaN.
    Returns {"cmc": {rank: rate}, "tpir": {fpir: rate}, "num_mated": int, "num_non_mated": int}.
    """
    subjects, scores = subject_scores(probe_features, gallery_features, gallery_subjects)
    probe_subjects = np.asarray(probe_subjects)
    mated = np.isin(probe_subjects, subjects)
    mated_scores = scores[mated]
    true_column = np.searchsorted(subjects, probe_subjects[mated])
    true_scores = mated_scores[np.arange(true_column.size), true_column]
    mated_rank = 1 + np.sum(mated_scores > true_scores[:, None], axis=1)
    non_mated_top = np.sort(scores[~mated].max(axis=1, initial=-np.inf))[::-1]

    nan = float("nan")
    cmc = {k: float(np.mean(mated_rank <= k)) if mated_rank.size else nan for k in ranks}
    tpir = {}
    for target in fpirs:
        allowed = int(np.floor(target * non_mated_top.size * (1.0 + 1e-9)))
        if allowed < 1 or mated_rank.size == 0:
            tpir[target] = nan
            continue
        threshold = non_mated_top[allowed] if allowed < non_mated_top.size else -np.inf
        tpir[target] = float(np.mean((mated_rank == 1) & (true_scores > threshold)))
    return {"cmc": cmc, "tpir": tpir, "num_mated": int(mated.sum()),
            "num_non_mated": int((~mated).sum())}


def gallery_names(csv_paths):
    """The gallery keys of a 1:N path dict, in release order (G1, G2 or S1, S2)."""
    return [name for name in csv_paths if name != "probe"]


def one_to_n(template_ids, template_features, csv_paths, ranks=(1, 5, 10), fpirs=(0.01, 0.1),
             convention="insightface"):
    """IJB 1:N of the mixed probes under `convention` (a key of ONE_TO_N_CONVENTIONS).

    template_ids: [T] sorted, template_features: [T, D] (from `pool_templates`); csv_paths: {gallery
    name: path, ..., "probe": path} (the release's 1:N csv files, whose templates are 1:1 ones).
    insightface: {"convention", "galleries": "G1+G2", "cmc", "tpir", "threshold", "num_probes", ...}
    over the joined gallery. open_set: {"convention", name: {...} per gallery, "mean": {"cmc", "tpir"}}.
    """
    if convention not in ONE_TO_N_CONVENTIONS:
        raise PlscError(f"1:N convention {convention!r} is not one of {', '.join(ONE_TO_N_CONVENTIONS)}")
    probe_templates, probe_subjects = read_template_subjects(csv_paths["probe"])
    probes = template_features[template_positions(template_ids, probe_templates, str(csv_paths["probe"]))]
    galleries = {}
    for name in gallery_names(csv_paths):
        gallery_templates, gallery_subjects = read_template_subjects(csv_paths[name])
        rows = template_positions(template_ids, gallery_templates, str(csv_paths[name]))
        galleries[name] = (template_features[rows], gallery_subjects)
    if convention == "insightface":
        features = np.concatenate([features for features, _ in galleries.values()])
        subjects = np.concatenate([subjects for _, subjects in galleries.values()])
        joined = "+".join(galleries)
        result = insightface_identification(features, subjects, probes, probe_subjects, ranks, fpirs,
                                            source=f"{csv_paths['probe']} against {joined}")
        return {"convention": convention, "galleries": joined, **result}
    results = {"convention": convention}
    for name, (features, subjects) in galleries.items():
        results[name] = open_set_identification(features, subjects, probes, probe_subjects, ranks, fpirs)
    results["mean"] = {figure: {key: float(np.mean([results[name][figure][key] for name in galleries]))
                                for key in results[gallery_names(csv_paths)[0]][figure]}
                       for figure in ("cmc", "tpir")}
    return results


# ---- The release's protocol files (meta/ of IJB_release/IJBC or IJBB) ----------------------------

# PLSC's scripts read `{t}_face_tid_mid.txt`; some copies of the release name it
# `{t}_face_tform_id_media.txt`. The first that exists is used.
TEMPLATE_MEDIA_NAMES = ("{t}_face_tid_mid.txt", "{t}_face_tform_id_media.txt")
PAIRS_NAME = "{t}_template_pair_label.txt"
LANDMARKS_NAME = "{t}_name_5pts_score.txt"
# The 1:N files of each release: IJB-C names its two galleries G1 / G2, IJB-B names them S1 / S2.
ONE_TO_N_NAMES = {
    "ijbc": {"G1": "ijbc_1N_gallery_G1.csv", "G2": "ijbc_1N_gallery_G2.csv", "probe": "ijbc_1N_probe_mixed.csv"},
    "ijbb": {"S1": "ijbb_1N_gallery_S1.csv", "S2": "ijbb_1N_gallery_S2.csv", "probe": "ijbb_1N_probe_mixed.csv"},
}


@dataclass(frozen=True)
class IJBProtocol:
    """The 1:1 protocol of one IJB target, image-aligned: every [N] array follows `image_names`."""

    image_names: list      # [N] file names inside loose_crop/
    templates: np.ndarray  # [N] int64
    medias: np.ndarray     # [N] int64
    landmarks: np.ndarray  # [N, 5, 2] float32 (x, y) in loose-crop pixels
    faceness: np.ndarray   # [N] float32 detector scores
    pairs: np.ndarray      # [P, 2] int64 template ids
    labels: np.ndarray     # [P] int8, 1 = same subject
    one_to_n: dict         # {"G1", "G2" (IJB-B: "S1", "S2"), "probe": csv path}; empty when not asked for


def _text_lines(path):
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return [line.split() for line in handle if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise PlscError(f"{path}: cannot read ({error})") from error


def read_template_media(path):
    """`name template media` lines -> (names [N], templates [N] int64, medias [N] int64)."""
    rows = _text_lines(path)
    try:
        names = [row[0] for row in rows]
        ids = np.array([(int(row[1]), int(row[2])) for row in rows], dtype=np.int64).reshape(-1, 2)
    except (IndexError, ValueError) as error:
        raise PlscError(f"{path}: expected 'name template_id media_id' lines ({error})") from error
    return names, ids[:, 0], ids[:, 1]


def read_landmarks(path):
    """`name x1 y1 ... x5 y5 score` lines -> (names [N], landmarks [N, 5, 2], faceness [N])."""
    rows = _text_lines(path)
    bad = next((number for number, row in enumerate(rows, 1) if len(row) != 12), None)
    if bad is not None:
        raise PlscError(f"{path}: line {bad} does not have a name, 10 landmark coordinates and a score")
    try:
        values = np.array([row[1:] for row in rows], dtype=np.float32).reshape(-1, 11)
    except ValueError as error:
        raise PlscError(f"{path}: non-numeric landmark or score ({error})") from error
    return [row[0] for row in rows], values[:, :10].reshape(-1, 5, 2), values[:, 10]


def read_pairs(path):
    """`t1 t2 label` lines -> (pairs [P, 2] int64, labels [P] int8)."""
    try:
        table = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as error:
        raise PlscError(f"{path}: expected 'template1 template2 label' lines ({error})") from error
    if table.shape[1] != 3:
        raise PlscError(f"{path}: expected 3 columns, found {table.shape[1]}")
    return table[:, :2], table[:, 2].astype(np.int8)


def read_template_subjects(path):
    """1:N csv (header with TEMPLATE_ID, SUBJECT_ID) -> (template_ids [T], subject_ids [T]), one per template."""
    try:
        with open(path, "r", encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = [column.strip().upper() for column in next(reader, [])]
            if "TEMPLATE_ID" not in header or "SUBJECT_ID" not in header:
                raise PlscError(f"{path}: header must name TEMPLATE_ID and SUBJECT_ID columns")
            template_column, subject_column = header.index("TEMPLATE_ID"), header.index("SUBJECT_ID")
            pairs = np.array([(int(row[template_column]), int(row[subject_column]))
                              for row in reader if row], dtype=np.int64).reshape(-1, 2)
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as error:
        raise PlscError(f"{path}: cannot read TEMPLATE_ID / SUBJECT_ID ({error})") from error
    pairs = np.unique(pairs, axis=0)  # the csv has one row per image; keep one per template
    template_ids, counts = np.unique(pairs[:, 0], return_counts=True)
    if np.any(counts > 1):
        raise PlscError(f"{path}: template {template_ids[counts > 1][0]} is listed with several subjects")
    return pairs[:, 0], pairs[:, 1]


def _first_existing(meta_dir, patterns, target):
    candidates = [meta_dir / pattern.format(t=target) for pattern in patterns]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise PlscError(f"missing meta file {candidates[0]}"
                        + (f" (or {', '.join(c.name for c in candidates[1:])})" if len(candidates) > 1 else ""))
    return found


def read_ijb_protocol(image_root, target="IJBC", one_to_n=True):
    """Read `{image_root}/meta/{target}_*` into an IJBProtocol.

    With one_to_n (the default) the release's 1:N csv files must all be there: a missing one is a
    PlscError naming it. one_to_n=False reads the 1:1 protocol only.
    """
    meta_dir = Path(image_root) / "meta"
    prefix = target.lower()
    if prefix not in ONE_TO_N_NAMES:
        raise PlscError(f"IJB target {target!r} is not IJBC or IJBB")
    names, templates, medias = read_template_media(_first_existing(meta_dir, TEMPLATE_MEDIA_NAMES, prefix))
    landmark_path = _first_existing(meta_dir, (LANDMARKS_NAME,), prefix)
    landmark_names, landmarks, faceness = read_landmarks(landmark_path)
    if landmark_names != names:
        mismatch = next((i for i, (a, b) in enumerate(zip(names, landmark_names)) if a != b),
                        min(len(names), len(landmark_names)))
        raise PlscError(f"{landmark_path}: image list differs from the template/media file "
                        f"at line {mismatch + 1}")
    pairs, labels = read_pairs(_first_existing(meta_dir, (PAIRS_NAME,), prefix))
    one_to_n_paths = {}
    if one_to_n:
        one_to_n_paths = {key: meta_dir / name for key, name in ONE_TO_N_NAMES[prefix].items()}
        missing = [str(path) for path in one_to_n_paths.values() if not path.is_file()]
        if missing:
            raise PlscError(f"missing 1:N protocol file {missing[0]}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                            + "; without the 1:N files run the 1:1 protocol only")
    return IJBProtocol(names, templates, medias, landmarks, faceness, pairs, labels, one_to_n_paths)
