"""BUPT-Balancedface index.txt (zip and folder), FFEM's image_list.json, its tools, and the FFEM transforms."""
import json
import logging
import zipfile

import cv2
import numpy as np
import pytest

from plsc.data.dataset.balanced_face import BalancedFaceDataset
from plsc.data.dataset.boxed_list import BoxedImageListDataset, renumber_by_first_appearance
from plsc.data.dataset.tools import ffem_json_to_rec, ffem_landmarks_to_box
from plsc.data.recordio import RecordReader, unpack_record
from plsc.data.transforms import ColorJitter, Cutout
from plsc.errors import PlscError

DECODE = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}]
INDEX = ("African/m.01/0001.jpg 0 0 1\nAfrican/m.01/0002.jpg 0 0 1\nAsian/m.02/0001.jpg 1 1 1\n"
         "Indian/m.03/0001.jpg 3 2 1\n")


def jpeg(value, size=(20, 30)):
    image = np.full((*size, 3), value, dtype=np.uint8)
    image[:, : size[1] // 2] = 255 - value  # left half differs, so crops are recognisable
    return cv2.imencode(".jpg", image)[1].tobytes()


def balanced_files(index=INDEX, skip=()):
    files = {"data/index.txt": index.encode()}
    for line in range(len(index.splitlines())):
        if line not in skip:
            files[f"data/img/{line:07d}.jpg"] = jpeg(40 * line)
    return files


def as_zip(tmp_path, files):
    path = tmp_path / "BUPT-Balancedface.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return str(path)


def as_folder(tmp_path, files):
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return str(tmp_path)


@pytest.mark.parametrize("layout", [as_zip, as_folder])
def test_balanced_face_reads_zip_and_folder(tmp_path, layout, caplog):
    # The trainer's get_logger stops "plsc" propagating to the root logger (where caplog listens),
    # so listen on the "plsc" logger itself: the test then passes after any Trainer test too.
    plsc_logger = logging.getLogger("plsc")
    plsc_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="plsc"):
            dataset = BalancedFaceDataset(layout(tmp_path, balanced_files()), transform_ops=DECODE)
    finally:
        plsc_logger.removeHandler(caplog.handler)
    assert list(dataset.labels) == [0, 0, 1, 2] and list(dataset.groups) == [0, 0, 1, 3]
    assert dataset.group_counts() == {"African": (2, 1), "Asian": (1, 1), "Indian": (1, 1)}
    assert "African: 2 images of 1 identities" in caplog.text
    image, label, masked = dataset.read_sample(2)
    assert image.shape == (20, 30, 3) and label == 1 and masked == 0
    assert dataset[2][3] == 1  # the loader's sample carries the race as its group field
    assert abs(int(image[0, -1, 0]) - 80) < 8  # line 2 is data/img/0000002.jpg
    chosen = BalancedFaceDataset(layout(tmp_path, balanced_files()), transform_ops=DECODE, selected_races=["Asian"])
    assert list(chosen.labels) == [1]


@pytest.mark.parametrize("index,message", [
    ("a 0 0\n", "expected '<comment> <attribute> <label> <exists>'"),
    ("a 0 x 1\n", "must be integers"),
    ("a 7 0 1\n", "attribute 7 has no name"),
    ("a 0 0 1\n\nb 0 0 1\n", "empty line"),
])
def test_balanced_face_bad_index_names_line(tmp_path, index, message):
    files = {"data/index.txt": index.encode(), "data/img/0000000.jpg": jpeg(0)}
    with pytest.raises(PlscError, match=message) as raised:
        BalancedFaceDataset(as_zip(tmp_path, files), transform_ops=DECODE)
    assert "index.txt:" in str(raised.value) and "\n" not in str(raised.value)


def test_balanced_face_missing_image_and_bad_zip(tmp_path):
    with pytest.raises(PlscError, match=r"0000001.jpg .*line 2.*image missing"):
        BalancedFaceDataset(as_zip(tmp_path, balanced_files(skip=(1,))), transform_ops=DECODE)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(PlscError, match="cannot open as a zip"):
        BalancedFaceDataset(str(tmp_path / "broken.zip"))


def write_list(tmp_path, entries, images=("a.jpg", "b.jpg", "c.jpg")):
    for value, name in enumerate(images):
        (tmp_path / name).write_bytes(jpeg(60 * value, size=(40, 50)))
    path = tmp_path / "image_list.json"
    path.write_text(json.dumps(entries))
    return str(path)


GOOD = {"a.jpg": {"label": 7, "x1": 5, "y1": 4, "x2": 45, "y2": 36},
        "b.jpg": {"label": 3, "x1": 0, "y1": 0, "x2": 50, "y2": 40},
        "c.jpg": {"label": 7, "x1": 25, "y1": 0, "x2": 50, "y2": 20}}


def test_boxed_list_crops_to_box_and_renumbers(tmp_path):
    dataset = BoxedImageListDataset(str(tmp_path), write_list(tmp_path, GOOD), transform_ops=DECODE, image_size=16)
    assert list(dataset.labels) == [0, 1, 0]  # 7 first, then 3
    crop, label, _ = dataset.read_sample(2)  # the right half only: one flat colour
    assert crop.shape == (16, 16, 3) and label == 0 and crop.std() < 4
    full, _, _ = dataset.read_sample(1)
    assert full[:, :6].mean() > 150 and full[:, -6:].mean() < 100  # both halves of image b (195 | 60)


def test_boxed_list_jitter_half_the_time_in_training_only(tmp_path):
    path = write_list(tmp_path, GOOD)
    plain = BoxedImageListDataset(str(tmp_path), path, transform_ops=DECODE)
    jittered = BoxedImageListDataset(str(tmp_path), path, transform_ops=DECODE, jitter_prob=0.5)
    moved = 0
    for epoch in range(40):
        rng = np.random.default_rng((0, epoch, 0))
        box = jittered.box_for(0, (40, 50), rng)
        moved += not np.array_equal(box, GOOD_BOX)
        assert np.all(np.abs(box - GOOD_BOX) <= 0.1 * np.array([40, 32, 40, 32]) + 1e-9)
        assert np.array_equal(plain.box_for(0, (40, 50), np.random.default_rng(epoch)), GOOD_BOX)
    assert 10 < moved < 30


GOOD_BOX = np.array([5, 4, 45, 36], dtype=np.float64)


@pytest.mark.parametrize("entry,message", [
    ({"label": "seven", "x1": 0, "y1": 0, "x2": 5, "y2": 5}, "label 'seven' is not an integer"),
    ({"label": 1.5, "x1": 0, "y1": 0, "x2": 5, "y2": 5}, "is not an integer"),
    ({"label": 1, "x1": 6, "y1": 0, "x2": 5, "y2": 5}, "not a box"),
    ({"label": 1, "x1": 0, "y1": 0, "x2": 5}, "needs the keys"),
])
def test_boxed_list_bad_entries_name_the_entry(tmp_path, entry, message):
    with pytest.raises(PlscError, match=message) as raised:
        BoxedImageListDataset(str(tmp_path), write_list(tmp_path, {"a.jpg": entry}), transform_ops=DECODE)
    assert "entry 'a.jpg'" in str(raised.value)


def test_boxed_list_missing_file_and_box_outside_image(tmp_path):
    with pytest.raises(PlscError, match=r"gone.jpg.*image not found"):
        BoxedImageListDataset(str(tmp_path), write_list(tmp_path, {"gone.jpg": GOOD["a.jpg"]}), transform_ops=DECODE)
    outside = {"a.jpg": {"label": 0, "x1": 0, "y1": 0, "x2": 80, "y2": 20}}
    dataset = BoxedImageListDataset(str(tmp_path), write_list(tmp_path, outside), transform_ops=DECODE)
    with pytest.raises(PlscError, match=r"entry 'a.jpg'.*outside the 50x40 image"):
        dataset.read_sample(0)


def test_json_to_rec_and_landmarks_to_box(tmp_path):
    path = write_list(tmp_path, GOOD)
    summary = ffem_json_to_rec.convert(str(tmp_path), path, str(tmp_path / "rec"), image_size=16)
    assert summary["images"] == 3 and summary["classes"] == 2
    with RecordReader(tmp_path / "rec" / "train.rec", tmp_path / "rec" / "train.idx") as reader:
        header, image = unpack_record(reader.read(2))
    assert header.labels == 1.0 and cv2.imdecode(np.frombuffer(image, np.uint8), 1).shape == (16, 16, 3)
    assert (tmp_path / "rec" / "property").read_text() == "2,16,16"
    frontal = [[40, 50], [60, 50], [50, 60], [42, 70], [58, 70]]
    x1, y1, x2, y2 = ffem_landmarks_to_box.landmarks_to_box(frontal)
    width, height = 20 / 1.5, 20 / 1.5
    assert (x1, y1, x2, y2) == pytest.approx((40 - width, 50 - height, 60 + width, 70 + height))
    turned = [[40, 50], [60, 50], [56, 60], [42, 70], [58, 70]]  # nose nearer the right eye
    assert ffem_landmarks_to_box.landmarks_to_box(turned)[0] > x1
    (tmp_path / "marks.txt").write_text("a.jpg 3 " + " ".join(str(v) for point in frontal for v in point) + "\nb.jpg x\n")
    with pytest.raises(PlscError, match="marks.txt:2"):
        ffem_landmarks_to_box.convert(str(tmp_path / "marks.txt"), str(tmp_path / "out.json"))


def test_colour_jitter_and_cutout():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    identity = ColorJitter(hue=0.0, brightness=0.0, contrast=(1.0, 1.0))(image, np.random.default_rng(1))
    assert np.abs(identity.astype(int) - image).max() <= 1  # the float HSV round trip keeps the image
    changed = ColorJitter()(image, np.random.default_rng(2))
    assert changed.shape == image.shape and changed.dtype == np.uint8 and not np.array_equal(changed, image)
    flat = np.zeros((40, 40, 3), dtype=np.uint8)
    cut = [Cutout(max_size=38, prob=0.5)(flat, np.random.default_rng(seed)) for seed in range(40)]
    sizes = [int((image > 0).any(axis=2).sum()) for image in cut]
    assert 5 < sum(size > 0 for size in sizes) < 35 and max(sizes) <= 38 * 38
    with pytest.raises(PlscError):
        Cutout(max_size=0)
