"""Group-labelled synthetic sets: RFW-style per-group .bin files and an identity folder with groups.txt."""
import os

import cv2
import numpy as np
import pytest

from plsc.data.synthetic.fairness import ensure_fairness_data, group_identity_index, main
from plsc.data.verification_bin import load_bin
from plsc.errors import PlscError


def face_patch_brightness(encoded):
    """Mean grey level of the cheeks under the eyes (template x 30..45 / 67..82, y 60..75)."""
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    return (image[60:75, 30:45].mean() + image[60:75, 67:82].mean()) / 2


@pytest.fixture(scope="module")
def fairness_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fairness")
    paths = ensure_fairness_data(str(root), groups=("group_a", "group_d"), num_pairs=16, pair_identities=8,
                                 folder_identities=3, images_per_identity=2, seed=1)
    return root, paths


def test_pair_sets_per_group(fairness_data):
    _, paths = fairness_data
    assert set(paths["bins"]) == {"group_a", "group_d"}
    brightness = {}
    for group, path in paths["bins"].items():
        images, issame = load_bin(path)
        assert len(images) == 32 and issame.sum() == 8
        brightness[group] = np.mean([face_patch_brightness(image) for image in images])
    # group_a draws light skin tones (0.72..1), group_d dark ones (0..0.3).
    assert brightness["group_a"] > brightness["group_d"] + 30


def test_identity_folder_has_a_group_per_label(fairness_data):
    root, paths = fairness_data
    lines = [line.split("\t") for line in open(paths["label_file"]).read().splitlines()]
    assert len(lines) == 12
    assert sorted({int(label) for _, label in lines}) == list(range(6))
    assert all(os.path.isfile(os.path.join(paths["folder"], path)) for path, _ in lines)
    groups = dict(line.split() for line in open(paths["group_file"]).read().splitlines())
    assert groups == {"0": "group_a", "1": "group_a", "2": "group_a", "3": "group_d", "4": "group_d", "5": "group_d"}


def test_complete_sets_are_reused_and_changed_ones_redone(fairness_data):
    root, paths = fairness_data
    before = os.path.getmtime(paths["bins"]["group_a"])
    ensure_fairness_data(str(root), groups=("group_a", "group_d"), num_pairs=16, pair_identities=8,
                         folder_identities=3, images_per_identity=2, seed=1)
    assert os.path.getmtime(paths["bins"]["group_a"]) == before
    messages = []
    ensure_fairness_data(str(root), groups=("group_a", "group_d"), num_pairs=16, pair_identities=8,
                         folder_identities=2, images_per_identity=2, seed=1, log=messages.append)
    assert os.path.getmtime(paths["bins"]["group_a"]) == before
    announced = [message for message in messages if message.startswith("generating ")]  # not progress lines
    assert len(announced) == 1 and "folder" in announced[0]


def test_groups_use_disjoint_identities_and_unknown_groups_fail(tmp_path):
    assert group_identity_index("group_a", 5) != group_identity_index("group_b", 5)
    with pytest.raises(PlscError, match="unknown synthetic face group"):
        ensure_fairness_data(str(tmp_path), groups=("martians",))
    assert main(["--out", str(tmp_path), "--groups", "martians"]) == 2
