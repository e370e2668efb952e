"""Converters (.rec -> folder, .bin -> PNG pairs) and the synthetic writers of both formats."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from plsc.data.dataset.face_identification import read_label_file
from plsc.data.dataset.tools import lfw_style_bin_dataset_converter, mx_recordio_2_images
from plsc.data.dataset.tools.lfw_style_bin_dataset_converter import convert_bin_to_images
from plsc.data.dataset.tools.mx_recordio_2_images import convert_recordio_to_images
from plsc.data.recordio import FaceRecordIndex, RecordReader, RecordWriter, pack_record
from plsc.data.synthetic.formats import write_bin as write_synthetic_bin
from plsc.data.synthetic.formats import write_recordio
from plsc.data.verification_bin import load_bin, write_bin
from plsc.errors import PlscError

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_image(rng, extension):
    """A random 6x5 colour image, encoded."""
    ok, encoded = cv2.imencode(extension, rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
    assert ok
    return encoded.tobytes()


@pytest.fixture
def release(tmp_path):
    """train.rec/train.idx in the face layout: 5 images (JPEG and PNG, one with flag > 0 labels), 3 identities."""
    rng = np.random.default_rng(0)
    labels = [0, 0, 1, 2, 2]
    images = [tiny_image(rng, ".jpg" if i != 2 else ".png") for i in range(5)]
    root = tmp_path / "release"
    root.mkdir()
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record((0, [6, 9], 0, 0)))
        for key, (label, image) in enumerate(zip(labels, images), start=1):
            writer.write(key, pack_record((0, [label, 1.0] if key == 4 else label, key, 0), image))
        for key, (start, end) in zip((6, 7, 8), [(1, 3), (3, 4), (4, 6)]):
            writer.write(key, pack_record((0, [start, end], 0, 0)))
    (root / "property").write_text("3,6,5")
    return root, labels, images


def test_recordio_to_images(release, tmp_path):
    root, labels, images = release
    out = tmp_path / "out"
    summary = convert_recordio_to_images(str(root), str(out), progress=False)
    assert summary["images"] == 5 and summary["written"] == 5 and summary["classes"] == 3
    names = [f"images/{key:08d}.{'png' if key == 3 else 'jpg'}" for key in range(1, 6)]
    assert sorted(os.listdir(out / "images")) == sorted(name.split("/")[1] for name in names)
    for name, image in zip(names, images):
        assert (out / name).read_bytes() == image  # the record's bytes, not re-encoded
    lines = (out / "label.txt").read_text().splitlines()
    assert lines == [f"{name}\t{label}" for name, label in zip(names, labels)]
    rows = read_label_file(str(out / "label.txt"))  # what FaceIdentificationDataset reads
    assert [fields for _, fields in rows] == [[name, str(label)] for name, label in zip(names, labels)]


def test_recordio_to_images_rerun_resumes(release, tmp_path):
    root, _, images = release
    out = tmp_path / "out"
    convert_recordio_to_images(str(root), str(out), progress=False)
    first_labels = (out / "label.txt").read_bytes()
    assert convert_recordio_to_images(str(root), str(out), progress=False)["skipped"] == 5
    (out / "images/00000001.jpg").unlink()
    (out / "images/00000002.jpg").write_bytes(images[1][:10])  # interrupted half-way
    summary = convert_recordio_to_images(str(root), str(out), progress=False)
    assert (summary["written"], summary["skipped"]) == (2, 3)
    assert (out / "images/00000001.jpg").read_bytes() == images[0]
    assert (out / "images/00000002.jpg").read_bytes() == images[1]
    assert (out / "label.txt").read_bytes() == first_labels
    assert not list(out.rglob("*.tmp"))


def test_recordio_without_header_uses_all_keys(tmp_path):
    rng = np.random.default_rng(3)
    images = {key: tiny_image(rng, ".jpg") for key in (0, 1, 2)}
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key, image in images.items():
            writer.write(key, pack_record((0, 2 - key, key, 0), image))
    summary = convert_recordio_to_images(str(tmp_path), str(tmp_path / "out"), progress=False)
    assert summary["images"] == 3 and summary["classes"] == 3
    lines = (tmp_path / "out/label.txt").read_text().splitlines()
    assert lines == [f"images/{key:08d}.jpg\t{2 - key}" for key in (0, 1, 2)]
    assert (tmp_path / "out/images/00000000.jpg").read_bytes() == images[0]


def test_recordio_converter_errors_are_one_line(release, tmp_path, capsys):
    assert mx_recordio_2_images.main(["--root_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "train.rec: no such file" in error and error.count("\n") == 1
    root, _, _ = release
    with RecordWriter(root / "train.rec", root / "train.idx") as writer:
        writer.write(0, pack_record((0, 1, 0, 0), b"GIF89a..."))
    with pytest.raises(PlscError, match=r"train\.rec key 0: image bytes are neither JPEG nor PNG"):
        convert_recordio_to_images(str(root), str(tmp_path / "out"), progress=False)


def run_module(module, *args):
    environment = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=environment, cwd=str(REPO_ROOT), timeout=300)


def test_recordio_converter_as_module(release, tmp_path):
    root, _, _ = release
    result = run_module("plsc.data.dataset.tools.mx_recordio_2_images", "--root_dir", str(root),
                        "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "images: 5" in result.stdout and (tmp_path / "out/label.txt").exists()
    result = run_module("plsc.data.dataset.tools.mx_recordio_2_images", "--root_dir", str(tmp_path / "none"),
                        "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: " in result.stderr and "train.rec: no such file" in result.stderr


def pair_images(seed):
    rng = np.random.default_rng(seed)
    return [tiny_image(rng, ".png") for _ in range(4)] + [tiny_image(rng, ".jpg") for _ in range(2)]


@pytest.mark.parametrize("flip_test", [False, True])
def test_bin_to_images(tmp_path, flip_test):
    images, issame = pair_images(1), [True, False, True]
    write_bin(tmp_path / "v.bin", images, issame)
    summary = convert_bin_to_images(str(tmp_path / "v.bin"), str(tmp_path / "out"), flip_test, progress=False)
    assert summary["pairs"] == 3
    expected_lines = [f"images/{k:08d}_0.png\timages/{k:08d}_1.png\t{int(issame[k])}" for k in range(3)]
    if flip_test:
        expected_lines += [f"images/{k:08d}_0_hflip.png\timages/{k:08d}_1_hflip.png\t{int(issame[k])}"
                           for k in range(3)]
    assert (tmp_path / "out/label.txt").read_text().splitlines() == expected_lines
    assert len(os.listdir(tmp_path / "out/images")) == (12 if flip_test else 6)
    for index, image in enumerate(images):
        original = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        stem = tmp_path / f"out/images/{index // 2:08d}_{index % 2}"
        assert Path(f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        np.testing.assert_array_equal(cv2.imread(f"{stem}.png"), original)  # PNG is lossless
        if flip_test:
            np.testing.assert_array_equal(cv2.imread(f"{stem}_hflip.png"), original[:, ::-1])


def test_bin_converter_errors(tmp_path, capsys):
    write_bin(tmp_path / "broken.bin", [b"\xff\xd8\xffnot really", b"x"], [True])
    with pytest.raises(PlscError, match=r"broken\.bin image 0 \(pair 0\): cannot decode"):
        convert_bin_to_images(str(tmp_path / "broken.bin"), str(tmp_path / "out"), progress=False)
    code = lfw_style_bin_dataset_converter.main(["--bin_path", str(tmp_path / "no.bin"),
                                                 "--out_dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 1 and error.count("\n") == 1 and "no.bin: no such file" in error


def test_bin_converter_as_module(tmp_path):
    write_bin(tmp_path / "v.bin", pair_images(2)[:4], [False, True])
    result = run_module("plsc.data.dataset.tools.lfw_style_bin_dataset_converter", "--bin_path",
                        str(tmp_path / "v.bin"), "--out_dir", str(tmp_path / "out"), "--flip_test")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "out/label.txt").read_text().splitlines()) == 4
    assert (tmp_path / "out/images/00000001_1_hflip.png").exists()


# ---- synthetic writers -----------------------------------------------------------------------------
def test_synthetic_recordio_face_layout(tmp_path):
    summary = write_recordio(str(tmp_path), num_classes=2, images_per_class=3, seed=5)
    assert summary["images"] == 6 and (tmp_path / "property").read_text().strip() == "2,112,112"
    index = FaceRecordIndex(RecordReader(tmp_path / "train.rec", tmp_path / "train.idx"))
    assert index.image_keys.tolist() == [1, 2, 3, 4, 5, 6] and index.identity_keys.tolist() == [7, 8]
    assert [index.identity_range(i) for i in range(2)] == [(1, 4), (4, 7)] and index.num_classes == 2
    decoded = []
    for position in range(6):
        label, image_bytes = index.read(position)
        assert label == position // 3 and image_bytes[:3] == b"\xff\xd8\xff"
        decoded.append(cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR))
        assert decoded[-1].shape == (112, 112, 3)
    assert not np.array_equal(decoded[0], decoded[1])  # each image is its own render
    # the converter sees the same images and labels
    convert_recordio_to_images(str(tmp_path), str(tmp_path / "out"), progress=False)
    lines = (tmp_path / "out/label.txt").read_text().splitlines()
    assert lines == [f"images/{key:08d}.jpg\t{(key - 1) // 3}" for key in range(1, 7)]


def test_synthetic_recordio_without_header_is_reproducible(tmp_path):
    write_recordio(str(tmp_path / "a"), num_classes=2, images_per_class=1, seed=5, with_header=False)
    write_recordio(str(tmp_path / "b"), num_classes=2, images_per_class=1, seed=5, with_header=True)
    plain = FaceRecordIndex(RecordReader(tmp_path / "a/train.rec", tmp_path / "a/train.idx"))
    layout = FaceRecordIndex(RecordReader(tmp_path / "b/train.rec", tmp_path / "b/train.idx"))
    assert plain.image_keys.tolist() == [0, 1] and not plain.has_identity_records and plain.num_classes == 2
    assert [plain.read(i) for i in range(2)] == [layout.read(i) for i in range(2)]  # same seed, same images


def test_synthetic_bin(tmp_path):
    issame = write_synthetic_bin(str(tmp_path / "sub/syn.bin"), num_pairs=4, seed=2)
    images, loaded_issame = load_bin(tmp_path / "sub/syn.bin")
    assert len(images) == 8 and loaded_issame.tolist() == list(issame) and loaded_issame.sum() == 2
    decoded = [cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR) for image in images]
    assert all(image.shape == (112, 112, 3) for image in decoded)
    assert write_synthetic_bin(str(tmp_path / "again.bin"), num_pairs=4, seed=2).tolist() == list(issame)
    assert load_bin(tmp_path / "again.bin")[0] == images
