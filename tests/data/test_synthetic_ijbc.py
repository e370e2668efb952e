"""The synthetic IJB release: landmarks follow the faces, and the protocol files are consistent."""
import itertools

import numpy as np
import pytest

from plsc.data.align import ARCFACE_TEMPLATE_112, align_face, read_aligned
from plsc.data.synthetic.ijbc import CANVAS_RANGE, loose_crop, write_synthetic_ijbc
from plsc.errors import PlscError
from plsc.metrics.ijb import read_ijb_protocol, read_template_subjects
from tests.data.test_align import blob_centres, blob_face


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loose_crop_landmarks_follow_the_face(seed):
    canvas, landmarks = loose_crop(blob_face(), ARCFACE_TEMPLATE_112.copy(), np.random.default_rng(seed))
    height, width = canvas.shape[:2]
    assert CANVAS_RANGE[0] <= min(height, width) and max(height, width) <= CANVAS_RANGE[1]
    assert np.all((landmarks >= 0) & (landmarks < [width, height]))
    found = blob_centres(align_face(canvas, landmarks), ARCFACE_TEMPLATE_112)
    assert np.max(np.linalg.norm(found - ARCFACE_TEMPLATE_112, axis=1)) < 0.5


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_synthetic_ijbc(tmp_path_factory.mktemp("ijb") / "IJBB", num_subjects=4, templates_per_subject=3,
                                medias_per_template=2, images_per_media=2, seed=1, target="IJBB")


def test_protocol_files_agree(release):
    protocol = read_ijb_protocol(release, "IJBB")
    assert len(protocol.image_names) == 4 * 3 * 2 * 2
    templates = np.unique(protocol.templates)
    assert templates.size == 12
    for template in templates:  # two media per template, never shared with another template
        medias = np.unique(protocol.medias[protocol.templates == template])
        assert medias.size == 2 and not np.isin(medias, protocol.medias[protocol.templates != template]).any()

    parts = {name: dict(zip(*map(np.ndarray.tolist, read_template_subjects(path))))
             for name, path in protocol.one_to_n.items()}
    assert list(parts) == ["S1", "S2", "probe"]  # IJB-B names its galleries S1, S2
    subject_of = {**parts["S1"], **parts["S2"], **parts["probe"]}
    assert sorted(subject_of) == templates.tolist()  # every template in exactly one 1:N file
    assert sum(map(len, parts.values())) == templates.size
    assert not set(parts["S1"].values()) & set(parts["S2"].values())
    assert sorted([*parts["S1"].values(), *parts["S2"].values()]) == sorted(set(subject_of.values()))

    # Every genuine pair (and only those) joins two templates of one subject; all genuine pairs are listed.
    for (first, second), label in zip(protocol.pairs.tolist(), protocol.labels.tolist()):
        assert label == int(subject_of[first] == subject_of[second])
    genuine = {tuple(sorted(p)) for p, label in zip(protocol.pairs.tolist(), protocol.labels) if label}
    expected = {(a, b) for a, b in itertools.combinations(templates.tolist(), 2) if subject_of[a] == subject_of[b]}
    assert genuine == expected and (protocol.labels == 0).any()
    assert np.all((protocol.faceness >= 0.5) & (protocol.faceness <= 1.0))


def test_aligned_faces_resemble_their_subject(release):
    protocol = read_ijb_protocol(release, "IJBB")
    faces = np.stack([read_aligned(release / "loose_crop" / name, points).astype(np.float32)
                      for name, points in zip(protocol.image_names, protocol.landmarks)])
    subject_of = {}
    for path in protocol.one_to_n.values():
        subject_of.update(zip(*map(np.ndarray.tolist, read_template_subjects(path))))
    subjects = np.array([subject_of[t] for t in protocol.templates.tolist()])
    distances = ((faces[:, None] - faces[None]) ** 2).mean(axis=(2, 3, 4))
    np.fill_diagonal(distances, np.inf)
    # Wrong landmarks would leave background in the crops: neighbours would be at chance (~0.25).
    assert np.mean(subjects[distances.argmin(axis=1)] == subjects) > 0.6


def test_too_small_a_release_is_a_user_error(tmp_path):
    with pytest.raises(PlscError, match="templates per subject"):
        write_synthetic_ijbc(tmp_path, num_subjects=3, templates_per_subject=1)
