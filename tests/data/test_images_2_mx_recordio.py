"""images_2_mx_recordio: the `.rec` it writes, read back by plsc and by a parser written here from the format."""
import os
import struct

import cv2
import numpy as np
import pytest

from plsc.data.dataset.mx_record import MXRecordDataset
from plsc.data.dataset.tools import images_2_mx_recordio
from plsc.data.dataset.tools.images_2_mx_recordio import build_recordio, main
from plsc.errors import PlscError
from tests.data.images import write_image


def parse_rec(directory):
    """{key: (flag, labels tuple, image bytes)} from train.rec/train.idx, straight from the byte layout.

    Record: uint32 magic 0xced7230a, uint32 (cflag << 29 | length), payload, zero padding to 4 bytes;
    payload: uint32 flag, float32 label, uint64 id, uint64 id2, then `flag` float32 labels, then image.
    Only whole records (cflag 0) are expected from small images.
    """
    with open(os.path.join(directory, "train.rec"), "rb") as handle:
        data = handle.read()
    records = {}
    with open(os.path.join(directory, "train.idx")) as handle:
        for line in handle:
            key, offset = (int(field) for field in line.split("\t"))
            magic, lrecord = struct.unpack_from("<II", data, offset)
            assert magic == 0xCED7230A and lrecord >> 29 == 0
            payload = data[offset + 8: offset + 8 + (lrecord & (2 ** 29 - 1))]
            flag, label, _, _ = struct.unpack_from("<IfQQ", payload, 0)
            labels = struct.unpack_from(f"<{flag}f", payload, 24) if flag else (label,)
            records[key] = (flag, labels, payload[24 + 4 * flag:])
    return records


@pytest.fixture
def image_folder(tmp_path):
    """3 classes listed out of order in label.txt; class 1 has one 150x150 PNG. -> (root, label path, bytes)."""
    root = tmp_path / "faces"
    layout = [("b/0.jpg", 1, 112), ("a/0.jpg", 0, 112), ("c/0.jpg", 2, 112), ("a/1.jpg", 0, 112),
              ("b/1.png", 1, 150), ("c/1.jpg", 2, 112), ("c/2.jpg", 2, 112)]
    contents = {}
    for seed, (relative, _, size) in enumerate(layout):
        contents[relative] = write_image(str(root / relative), size, seed, os.path.splitext(relative)[1])
    label_path = tmp_path / "label.txt"
    label_path.write_text("".join(f"{relative}\t{label}\n" for relative, label, _ in layout))
    return root, label_path, contents, layout


def test_layout_read_by_an_independent_parser_and_by_plsc(image_folder, tmp_path):
    root, label_path, contents, layout = image_folder
    out = tmp_path / "rec"
    summary = build_recordio(str(root), str(out), cls_label_path=str(label_path), log=lambda message: None)
    assert summary["images"] == 7 and summary["classes"] == 3 and summary["resized"] == 1
    assert (out / "property").read_text() == "3,112,112"
    records = parse_rec(out)
    assert sorted(records) == list(range(1 + 7 + 3))
    flag, labels, _ = records[0]
    assert flag == 2 and labels == (8.0, 11.0)
    # Images grouped by class in class order, label.txt order kept inside a class.
    expected_order = ["a/0.jpg", "a/1.jpg", "b/0.jpg", "b/1.png", "c/0.jpg", "c/1.jpg", "c/2.jpg"]
    label_of = {relative: label for relative, label, _ in layout}
    for key, relative in enumerate(expected_order, start=1):
        flag, labels, image = records[key]
        assert flag == 0 and labels == (float(label_of[relative]),)
        if relative == "b/1.png":  # resized to 112x112 and stored as JPEG
            decoded = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
            assert decoded.shape == (112, 112, 3) and image.startswith(b"\xff\xd8\xff")
        else:  # copied byte for byte
            assert image == contents[relative]
    assert [records[8 + c][1] for c in range(3)] == [(1.0, 3.0), (3.0, 5.0), (5.0, 8.0)]

    dataset = MXRecordDataset(str(out))
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert dataset.read_bytes(0) == contents["a/0.jpg"]
    dataset.check_labels(3)


def test_from_folders_shuffle_and_workers(tmp_path):
    root = tmp_path / "people"
    for person_index, (person, count) in enumerate((("zoe", 3), ("adam", 2), ("mia", 4))):
        for k in range(count):
            write_image(str(root / person / f"{k}.jpg"), 112, 10 * person_index + k)
    out_plain, out_shuffled = tmp_path / "plain", tmp_path / "shuffled"
    build_recordio(str(root), str(out_plain), from_folders=True, log=lambda message: None)
    build_recordio(str(root), str(out_shuffled), from_folders=True, shuffle=True, seed=3, num_workers=2,
                   log=lambda message: None)
    assert (out_plain / "classes.txt").read_text() == "0\tadam\n1\tmia\n2\tzoe\n"
    plain, shuffled = parse_rec(out_plain), parse_rec(out_shuffled)
    assert [plain[key][1][0] for key in range(1, 10)] == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert [shuffled[key][1][0] for key in range(1, 10)] == [0, 0, 1, 1, 1, 1, 2, 2, 2]
    # Shuffling permutes images within each identity only; identity ranges are unchanged.
    for identity, (start, end) in enumerate(((1, 3), (3, 7), (7, 10))):
        assert sorted(plain[k][2] for k in range(start, end)) == sorted(shuffled[k][2] for k in range(start, end))
        assert plain[10 + identity][1] == shuffled[10 + identity][1] == (float(start), float(end))
    assert [plain[k][2] for k in range(1, 10)] != [shuffled[k][2] for k in range(1, 10)]


def test_quality_re_encodes_everything(image_folder, tmp_path):
    root, label_path, contents, _ = image_folder
    summary = build_recordio(str(root), str(tmp_path / "q"), cls_label_path=str(label_path), quality=50,
                             log=lambda message: None)
    assert summary["re_encoded"] == 7 and summary["copied"] == 0
    assert parse_rec(tmp_path / "q")[1][2] != contents["a/0.jpg"]


def test_bad_label_and_bad_image_name_the_line(image_folder, tmp_path, capsys):
    root, label_path, _, _ = image_folder
    lines = label_path.read_text().splitlines()
    bad_label = tmp_path / "bad_label.txt"
    bad_label.write_text("\n".join(lines[:2] + ["a/1.jpg\tseven"]) + "\n")
    assert main(["--image_root", str(root), "--cls_label_path", str(bad_label), "--output_dir",
                 str(tmp_path / "o1")]) == 1
    error = capsys.readouterr().err.strip()
    assert error == f"error: {bad_label}:3: label 'seven' is not a non-negative integer"

    (root / "broken.jpg").write_bytes(b"not an image")
    bad_image = tmp_path / "bad_image.txt"
    bad_image.write_text("\n".join(lines[:4] + ["broken.jpg\t1"]) + "\n")
    out = tmp_path / "o2"
    assert main(["--image_root", str(root), "--cls_label_path", str(bad_image), "--output_dir", str(out),
                 "--num_workers", "2"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"error: {bad_image}:5: {root / 'broken.jpg'} is not a decodable image"
    # Nothing half-written is left under the final names, nor temporary files.
    assert sorted(os.listdir(out)) == []


def test_progress_log_lines_without_a_terminal(image_folder, tmp_path):
    root, label_path, _, _ = image_folder
    messages = []
    build_recordio(str(root), str(tmp_path / "p"), cls_label_path=str(label_path), log=messages.append,
                   progress=False)
    progress_lines = [line for line in messages if line.startswith("packing images: ")]
    assert progress_lines[-1].startswith("packing images: 7/7 images")
    assert any(line.startswith("warning: 1 images were not 112x112") and "label.txt:5" in line
               for line in messages)


def test_key_limit_of_float32_labels(monkeypatch, image_folder, tmp_path):
    root, label_path, _, _ = image_folder
    monkeypatch.setattr(images_2_mx_recordio, "MAX_EXACT_KEY", 10)
    with pytest.raises(PlscError, match="beyond 2\\*\\*24"):
        build_recordio(str(root), str(tmp_path / "k"), cls_label_path=str(label_path), log=lambda message: None)
