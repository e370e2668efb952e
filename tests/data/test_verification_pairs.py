"""Pair lists and .bin sets: issame is 1/true/0/false only, and a set needs at least 2 pairs."""
import numpy as np
import pytest

from plsc.data.dataset.face_verification import FaceVerificationDataset
from plsc.data.verification_bin import write_bin
from plsc.errors import PlscError
from tests.data.rec_builders import tiny_jpeg


def pair_list(tmp_path, values):
    lines = [f"a{k}.jpg\tb{k}.jpg\t{value}" for k, value in enumerate(values)]
    path = tmp_path / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_issame_accepts_1_true_0_false_in_any_case(tmp_path):
    values = ["1", "0", "true", "False", "TRUE", "false", " 1"]
    dataset = FaceVerificationDataset(image_root=str(tmp_path), cls_label_path=str(pair_list(tmp_path, values)))
    assert dataset.issame.tolist() == [True, False, True, False, True, False, True]
    assert dataset.labels.tolist() == [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]


@pytest.mark.parametrize("bad, line", [("yes", 2), ("2", 3), ("-1", 1), ("", 2)])
def test_any_other_issame_names_file_and_line(tmp_path, bad, line):
    values = ["1", "0", "1"]
    values[line - 1] = bad
    path = pair_list(tmp_path, values)
    if bad == "":  # a missing third field is a field-count error, still naming the line
        with pytest.raises(PlscError, match=rf"pairs.txt:{line}: expected 3 fields"):
            FaceVerificationDataset(image_root=str(tmp_path), cls_label_path=str(path))
        return
    with pytest.raises(PlscError, match=rf"pairs.txt:{line}: issame '{bad}' is not 1, true, 0 or false$"):
        FaceVerificationDataset(image_root=str(tmp_path), cls_label_path=str(path))


def test_a_list_of_one_pair_is_refused(tmp_path):
    with pytest.raises(PlscError, match=r"pairs.txt: 1 pair\(s\); k-fold verification needs at least 2"):
        FaceVerificationDataset(image_root=str(tmp_path), cls_label_path=str(pair_list(tmp_path, ["1"])))


@pytest.mark.parametrize("num_pairs", [0, 1])
def test_a_bin_with_fewer_than_two_pairs_is_refused(tmp_path, num_pairs):
    path = tmp_path / "tiny.bin"
    write_bin(path, [tiny_jpeg(k) for k in range(2 * num_pairs)], np.ones(num_pairs, dtype=bool))
    with pytest.raises(PlscError, match=rf"tiny.bin: {num_pairs} pair\(s\); k-fold verification needs at least 2"):
        FaceVerificationDataset(bin_path=str(path))
    write_bin(path, [tiny_jpeg(k) for k in range(4)], [True, False])
    assert FaceVerificationDataset(bin_path=str(path)).issame.tolist() == [True, False]
