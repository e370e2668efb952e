"""A tiny IJB-B/IJB-C look-alike in the release layout, for testing the IJB evaluation end to end.

Layout written under `out_dir` (t = target in lower case), as in the public release:
  loose_crop/{k}.jpg                      un-aligned photos (face at a random pose and scale)
  meta/{t}_face_tid_mid.txt               "name template_id media_id" per image
  meta/{t}_name_5pts_score.txt            "name x1 y1 ... x5 y5 faceness" per image, same order
  meta/{t}_template_pair_label.txt        "template1 template2 label" (1 = same subject)
  meta/{t}_1N_gallery_G1.csv, _G2.csv, meta/{t}_1N_probe_mixed.csv  (header, one row per image;
                                          IJB-B names its two galleries S1 and S2)
Each subject's first template is its gallery template (subjects alternate between the two galleries);
all its other templates are probes, so a probe is mated in one gallery and non-mated in the other.
"""
import itertools
from pathlib import Path

import cv2
import numpy as np

from plsc.data.synthetic.identity import make_identity
from plsc.data.synthetic.render import render_face
from plsc.data.synthetic.streams import stream_rng
from plsc.errors import PlscError

# Subjects are identities from this index on, above the ranges of the training classes, the
# verification pairs and the .bin sets (plsc.data.synthetic.quickstart.BIN_SETS: up to 5M) and
# below the fairness sets (plsc.data.synthetic.fairness: from 10M).
IJB_IDENTITY_OFFSET = 5_000_000
IJB_STREAM = 11  # random-stream tag of this writer (see plsc.data.synthetic.streams)
CANVAS_RANGE = (150, 250)  # loose-crop width and height, pixels
MAX_ROLL_DEG = 25.0
LANDMARK_NOISE_PX = 0.5  # detector error added to the true landmark positions
ONE_TO_N_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME"


def _similarity(scale, angle_deg, shift):
    angle = np.deg2rad(angle_deg)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[cos, -sin, shift[0]], [sin, cos, shift[1]]])


def loose_crop(face, landmarks, rng):
    """Place an aligned face [112,112,3] at a random roll/scale/offset in a larger noisy canvas.

    Returns (image uint8 [H, W, 3], landmarks [5, 2] in the canvas' pixels).
    """
    height, width = rng.integers(CANVAS_RANGE[0], CANVAS_RANGE[1] + 1, size=2)
    angle = rng.uniform(-MAX_ROLL_DEG, MAX_ROLL_DEG)
    extent = face.shape[0] * (abs(np.cos(np.deg2rad(angle))) + abs(np.sin(np.deg2rad(angle))))
    scale = rng.uniform(0.9, 0.98) * min(height, width) / extent
    matrix = _similarity(scale, angle, (0.0, 0.0))
    corners = np.array([[0, 0], [face.shape[1], 0], [0, face.shape[0]], [face.shape[1], face.shape[0]]])
    moved = corners @ matrix[:, :2].T
    # Any shift that keeps the rotated square inside the canvas.
    matrix[0, 2] = rng.uniform(-moved[:, 0].min(), width - moved[:, 0].max())
    matrix[1, 2] = rng.uniform(-moved[:, 1].min(), height - moved[:, 1].max())
    canvas = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 3.0)
    cv2.warpAffine(face, matrix, (int(width), int(height)), dst=canvas, flags=cv2.INTER_LINEAR,
                   borderMode=cv2.BORDER_TRANSPARENT)
    return canvas, landmarks @ matrix[:, :2].T + matrix[:, 2]


def plan_templates(num_subjects, templates_per_subject, medias_per_template, images_per_media, rng):
    """Rows (subject, template_id, media_id) per image, template ids from 1, media ids shuffled."""
    num_templates = num_subjects * templates_per_subject
    media_ids = rng.permutation(num_templates * medias_per_template) + 10_000
    rows = []
    for template in range(num_templates):
        subject = template // templates_per_subject
        for slot in range(medias_per_template):
            media = int(media_ids[template * medias_per_template + slot])
            rows.extend([(subject, template + 1, media)] * images_per_media)
    return rows


def plan_pairs(template_subjects, max_impostor_pairs, rng):
    """All genuine template pairs plus up to max_impostor_pairs impostor ones: [P, 3] (t1, t2, label)."""
    template_ids = sorted(template_subjects)
    genuine, impostor = [], []
    for first, second in itertools.combinations(template_ids, 2):
        same = template_subjects[first] == template_subjects[second]
        (genuine if same else impostor).append((first, second, int(same)))
    if len(impostor) > max_impostor_pairs:
        keep = np.sort(rng.choice(len(impostor), size=max_impostor_pairs, replace=False))
        impostor = [impostor[k] for k in keep]
    pairs = np.array(genuine + impostor, dtype=np.int64)
    return pairs[rng.permutation(len(pairs))]


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def write_synthetic_ijbc(out_dir, num_subjects=8, templates_per_subject=3, medias_per_template=2,
                         images_per_media=2, seed=0, target="IJBC", max_impostor_pairs=20_000,
                         jitter=1.0):
    """Write a synthetic IJB release under `out_dir` (see the module docstring); returns its Path."""
    if num_subjects < 2 or templates_per_subject < 2 or medias_per_template < 1 or images_per_media < 1:
        raise PlscError("synthetic IJB needs >= 2 subjects, >= 2 templates per subject (gallery + probe) "
                        "and >= 1 media per template and image per media")
    root = Path(out_dir)
    (root / "loose_crop").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    prefix = target.lower()
    plan_rng = stream_rng(IJB_STREAM, seed, 0)
    rows = plan_templates(num_subjects, templates_per_subject, medias_per_template, images_per_media, plan_rng)
    identities = [make_identity(seed, IJB_IDENTITY_OFFSET + s) for s in range(num_subjects)]

    template_lines, landmark_lines, subject_of_template, images_of_template = [], [], {}, {}
    for number, (subject, template, media) in enumerate(rows, start=1):
        rng = stream_rng(IJB_STREAM, seed, 1, number)
        face, landmarks = render_face(identities[subject], rng, jitter=jitter)
        image, landmarks = loose_crop(face, landmarks.astype(np.float64), rng)
        landmarks = landmarks + rng.normal(scale=LANDMARK_NOISE_PX, size=landmarks.shape)
        name = f"{number}.jpg"
        cv2.imwrite(str(root / "loose_crop" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        faceness = rng.uniform(0.5, 1.0)
        template_lines.append(f"{name} {template} {media}")
        landmark_lines.append(name + " " + " ".join(f"{v:.3f}" for v in landmarks.ravel()) + f" {faceness:.4f}")
        subject_of_template[template] = subject
        images_of_template.setdefault(template, []).append(name)

    _write_lines(root / "meta" / f"{prefix}_face_tid_mid.txt", template_lines)
    _write_lines(root / "meta" / f"{prefix}_name_5pts_score.txt", landmark_lines)
    pairs = plan_pairs(subject_of_template, max_impostor_pairs, plan_rng)
    _write_lines(root / "meta" / f"{prefix}_template_pair_label.txt", (" ".join(map(str, p)) for p in pairs))

    subject_ids = {subject: 1000 + subject for subject in range(num_subjects)}
    first, second = ("S1", "S2") if prefix == "ijbb" else ("G1", "G2")
    csv_rows = {first: [], second: [], "probe": []}
    for template, subject in sorted(subject_of_template.items()):
        is_gallery = (template - 1) % templates_per_subject == 0
        part = (first if subject % 2 == 0 else second) if is_gallery else "probe"
        csv_rows[part] += [f"{template},{subject_ids[subject]},img/{name}" for name in images_of_template[template]]
    file_names = {first: f"1N_gallery_{first}", second: f"1N_gallery_{second}", "probe": "1N_probe_mixed"}
    for part, lines in csv_rows.items():
        _write_lines(root / "meta" / f"{prefix}_{file_names[part]}.csv", [ONE_TO_N_HEADER, *lines])
    return root
