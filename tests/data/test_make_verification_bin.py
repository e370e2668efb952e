"""make_verification_bin: LFW pairs.txt and plain pair lists -> a .bin read by plsc and by a plain pickle.load."""
import pickle

import cv2
import numpy as np
import pytest

from plsc.data.dataset.face_verification import FaceVerificationDataset
from plsc.data.dataset.tools.make_verification_bin import main, make_verification_bin
from plsc.data.verification_bin import load_bin
from tests.data.images import write_image


@pytest.fixture
def lfw_like(tmp_path):
    """An LFW-named image folder: Ann (3 images), Bob (2), Cy (1); -> (root, {relative path: bytes})."""
    root = tmp_path / "lfw"
    files = {}
    for seed, (name, number) in enumerate([("Ann", 1), ("Ann", 2), ("Ann", 3), ("Bob", 1), ("Bob", 2), ("Cy", 1)]):
        relative = f"{name}/{name}_{number:04d}.jpg"
        files[relative] = write_image(str(root / relative), 112, seed)
    return root, files


def test_lfw_pairs_file(lfw_like, tmp_path):
    root, files = lfw_like
    pairs = tmp_path / "pairs.txt"
    # 2 folds of 1 same + 1 different pair each.
    pairs.write_text("2\t1\nAnn\t1\t3\nAnn\t2\tBob\t1\nBob\t1\t2\nCy\t1\tAnn\t2\n")
    out = tmp_path / "bins" / "lfw.bin"
    summary = make_verification_bin(str(pairs), str(root), str(out), log=lambda message: None)
    assert summary["pairs"] == 4 and summary["same"] == 2
    expected_images = [files[p] for p in ("Ann/Ann_0001.jpg", "Ann/Ann_0003.jpg", "Ann/Ann_0002.jpg",
                                          "Bob/Bob_0001.jpg", "Bob/Bob_0001.jpg", "Bob/Bob_0002.jpg",
                                          "Cy/Cy_0001.jpg", "Ann/Ann_0002.jpg")]
    with open(out, "rb") as handle:  # the way insightface's verification code reads it
        bins, issame_list = pickle.load(handle, encoding="bytes")
    assert bins == expected_images and issame_list == [True, False, True, False]
    images, issame = load_bin(str(out))
    assert images == expected_images and issame.tolist() == [True, False, True, False]
    dataset = FaceVerificationDataset(bin_path=str(out))
    assert len(dataset) == 8 and dataset.issame.tolist() == [True, False, True, False]


def test_plain_list_with_a_resized_image(lfw_like, tmp_path):
    root, files = lfw_like
    write_image(str(root / "big.jpg"), 200, 9)
    pairs = tmp_path / "list.txt"
    pairs.write_text("Ann/Ann_0001.jpg Ann/Ann_0002.jpg 1\nbig.jpg Bob/Bob_0002.jpg false\n")
    messages = []
    out = tmp_path / "mine.bin"
    assert make_verification_bin(str(pairs), str(root), str(out), log=messages.append, progress=False)["resized"] == 1
    assert any(message.startswith("warning: 1 images were not 112x112") and "list.txt:2" in message
               for message in messages)
    with open(out, "rb") as handle:
        bins, issame_list = pickle.load(handle)
    assert issame_list == [True, False] and bins[1] == files["Ann/Ann_0002.jpg"]
    assert cv2.imdecode(np.frombuffer(bins[2], np.uint8), cv2.IMREAD_COLOR).shape == (112, 112, 3)


@pytest.mark.parametrize("content, message", [
    ("1\nAnn\t1\t3\nAnn\t1\n", "pairs.txt:3: expected 'name n1 n2' or 'name1 n1 name2 n2', got 'Ann 1'"),
    ("2\nAnn\t1\t3\nAnn\t2\tBob\t1\n", "pairs.txt:1: the header announces 4 pairs but the file lists 2"),
    ("1\nAnn\t1\t9\nAnn\t2\tBob\t1\n", "pairs.txt:2: cannot read image"),
])
def test_bad_lfw_lines_name_the_line(lfw_like, tmp_path, capsys, content, message):
    root, _ = lfw_like
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(content)
    out = tmp_path / "x.bin"
    assert main(["--pairs", str(pairs), "--image_root", str(root), "--out", str(out)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {tmp_path / message}") and not out.exists()


def test_bad_issame_in_a_plain_list(lfw_like, tmp_path, capsys):
    root, _ = lfw_like
    pairs = tmp_path / "list.txt"
    pairs.write_text("Ann/Ann_0001.jpg Ann/Ann_0002.jpg 1\nCy/Cy_0001.jpg Bob/Bob_0002.jpg maybe\n")
    assert main(["--pairs", str(pairs), "--image_root", str(root), "--out", str(tmp_path / "x.bin")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {pairs}:2: issame 'maybe' is not 1, true, 0 or false"
