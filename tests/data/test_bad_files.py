"""Damaged inputs stop with a PlscError naming the file and the record key / list line: never a hang,
never a silently wrong label. Covers `.rec`/`.idx`, verification `.bin` pickles and image folders."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plsc.data.dataset.face_identification import FaceIdentificationDataset
from plsc.data.dataset.face_verification import FaceVerificationDataset
from plsc.data.dataset.mx_record import MXRecordDataset
from plsc.data.recordio import RecordWriter, pack_record
from plsc.data.verification_bin import write_bin
from plsc.errors import PlscError
from tests.data.rec_builders import read_idx, tiny_jpeg, write_face_rec

DECODE = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}, {"ToCHWImage": None}]
REPO_ROOT = Path(__file__).resolve().parents[2]


def cut_file(path, num_bytes):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - num_bytes)


def overwrite(path, offset, data):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def read_error(dataset, index):
    """The one-line message of the PlscError raised when sample `index` is read."""
    with pytest.raises(PlscError) as error:
        dataset.read_sample(index)
    return str(error.value)


# ---- RecordIO ------------------------------------------------------------------------------------
def test_truncated_rec_that_cuts_identity_records_fails_at_start_up(tmp_path):
    # Releases put the identity records last, so a short copy loses them first.
    write_face_rec(tmp_path, [2, 2, 2])
    cut_file(tmp_path / "train.rec", 6)
    last_identity_key = max(read_idx(tmp_path))
    with pytest.raises(PlscError, match=f"train.rec key {last_identity_key}: truncated record"):
        MXRecordDataset(str(tmp_path), DECODE)


def test_truncated_image_record_names_file_and_key_when_read(tmp_path):
    keys, _ = write_face_rec(tmp_path, [2, 2, 2], identities_first=True)
    cut_file(tmp_path / "train.rec", 10)  # inside the last image's JPEG
    dataset = MXRecordDataset(str(tmp_path), DECODE)
    message = read_error(dataset, len(keys) - 1)
    assert message.startswith(f"{tmp_path / 'train.rec'} key {keys[-1]}: truncated record")
    assert message.count("train.rec") == 1
    assert dataset.read_sample(0)[0].shape == (3, 8, 8)  # the rest still reads


def test_truncated_headerless_rec_fails_at_start_up(tmp_path):
    keys, _ = write_face_rec(tmp_path, [3, 3], with_header=False)
    cut_file(tmp_path / "train.rec", 10)
    with pytest.raises(PlscError, match=f"train.rec key {keys[-1]}: truncated record"):
        MXRecordDataset(str(tmp_path), DECODE)


def test_bad_magic_names_file_and_key(tmp_path):
    keys, _ = write_face_rec(tmp_path, [2, 2, 2])
    overwrite(tmp_path / "train.rec", read_idx(tmp_path)[int(keys[3])], b"\x00\x11\x22\x33")
    dataset = MXRecordDataset(str(tmp_path), DECODE)  # identity 1's first image (key 3) is fine
    message = read_error(dataset, 3)
    assert message.startswith(f"{tmp_path / 'train.rec'} key {keys[3]}: bad magic 0x33221100")


def test_idx_offset_past_the_end_fails_at_start_up(tmp_path):
    keys, _ = write_face_rec(tmp_path, [2, 2])
    offsets = read_idx(tmp_path)
    offsets[int(keys[2])] = os.path.getsize(tmp_path / "train.rec") + 100
    (tmp_path / "train.idx").write_text("".join(f"{key}\t{offset}\n" for key, offset in offsets.items()))
    with pytest.raises(PlscError, match=f"train.idx: key {keys[2]} has offset .* past the end of .*train.rec"):
        MXRecordDataset(str(tmp_path), DECODE)


def test_undecodable_image_names_file_and_key(tmp_path):
    images = [tiny_jpeg(i) for i in range(4)]
    images[1] = b"\xff\xd8 this is not a JPEG"
    keys, _ = write_face_rec(tmp_path, [2, 2], image_bytes=images)
    dataset = MXRecordDataset(str(tmp_path), DECODE)
    assert read_error(dataset, 1) == (f"{tmp_path / 'train.rec'} key {keys[1]}: "
                                      "cannot decode image (not a JPEG/PNG, or truncated)")


def test_record_shorter_than_its_header_names_the_key(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(0, pack_record((0, 0.0, 0, 0), tiny_jpeg(0)))
        writer.write(1, b"tiny")
    with pytest.raises(PlscError, match="train.rec key 1: record of 4 bytes is shorter than the 24-byte IRHeader"):
        MXRecordDataset(str(tmp_path), DECODE)


def test_header_record_naming_keys_missing_from_idx(tmp_path):
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(0, pack_record((0, [4, 5], 0, 0)))  # images 1..3, identity 4
        writer.write(1, pack_record((0, 0.0, 1, 0), tiny_jpeg(0)))
        writer.write(4, pack_record((0, [1, 4], 0, 0)))
    with pytest.raises(PlscError, match=r"train.idx: image key 2 \(named by the header record 0\) is not listed"):
        MXRecordDataset(str(tmp_path), DECODE)


# Run in its own process, as plsc-train would: the loader stops with the error and the process exits.
LOADER_SCRIPT = """
import sys
from plsc.data import build_loader
from plsc.data.dataset.mx_record import MXRecordDataset
from plsc.errors import PlscError

dataset = MXRecordDataset(sys.argv[1], [{"DecodeImage": None}, {"ToCHWImage": None}])
loader = build_loader(dataset, {"name": "BatchSampler", "batch_size": 2}, {"num_workers": 1})
try:
    for _ in loader:
        pass
except PlscError as error:
    print(f"PlscError: {error}")
    sys.exit(3)
"""


def test_corrupt_record_in_a_loader_worker_stops_the_process_with_file_and_key(tmp_path):
    keys, _ = write_face_rec(tmp_path, [3, 3])
    overwrite(tmp_path / "train.rec", read_idx(tmp_path)[int(keys[4])], b"\xde\xad\xbe\xef")
    result = subprocess.run([sys.executable, "-c", LOADER_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            timeout=300, cwd=REPO_ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout.strip() == f"PlscError: {tmp_path / 'train.rec'} key {keys[4]}: bad magic 0xefbeadde at " \
                                    f"offset {read_idx(tmp_path)[int(keys[4])]} (expected 0xced7230a)"


# ---- verification .bin -----------------------------------------------------------------------------
class RunsShell:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01 not a pickle", "not a verification .bin pickle"),
    (pickle.dumps(([b"a", b"b"], [True]))[:-7], "not a verification .bin pickle"),
    (pickle.dumps(([b"a", b"b"], [RunsShell()])), "refused to unpickle posix.system"),
    (pickle.dumps({"bins": []}), "expected a pickled (bins, issame_list) pair"),
    (pickle.dumps(([b"a", b"b", b"c"], [True])), "bins holds 3 images, expected an even number"),
    (pickle.dumps(([b"a", b"b"], [True, False])), "issame_list has 2 entries for 1 pairs"),
])
def test_malformed_bin_names_the_file(tmp_path, content, message):
    path = tmp_path / "lfw.bin"
    path.write_bytes(content)
    with pytest.raises(PlscError) as error:
        FaceVerificationDataset(bin_path=str(path), transform_ops=DECODE)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


def test_undecodable_image_in_a_bin_names_the_file_and_pair(tmp_path):
    path = tmp_path / "cfp_fp.bin"
    write_bin(str(path), [tiny_jpeg(0), tiny_jpeg(1), tiny_jpeg(2), b"garbage"], [True, False])
    dataset = FaceVerificationDataset(bin_path=str(path), transform_ops=DECODE)
    assert dataset.read_sample(2)[0].shape == (3, 8, 8)
    assert read_error(dataset, 3) == f"{path} (image 3, pair 1): cannot decode image (not a JPEG/PNG, or truncated)"


# ---- image folder ------------------------------------------------------------------------------
@pytest.fixture()
def image_folder(tmp_path):
    lines = []
    for index in range(4):
        relative = f"images/{index // 2:06d}/{index:04d}.jpg"
        os.makedirs(tmp_path / os.path.dirname(relative), exist_ok=True)
        (tmp_path / relative).write_bytes(tiny_jpeg(index))
        lines.append(f"{relative}\t{index // 2}\n")
    (tmp_path / "label.txt").write_text("".join(lines))
    return tmp_path


def test_missing_image_in_folder_names_file_and_label_line(image_folder):
    os.remove(image_folder / "images/000001/0002.jpg")
    dataset = FaceIdentificationDataset(str(image_folder), str(image_folder / "label.txt"), DECODE)
    message = read_error(dataset, 2)
    assert message == (f"{image_folder / 'images/000001/0002.jpg'} ({image_folder / 'label.txt'}:3): "
                       f"cannot read image: No such file or directory")


def test_undecodable_image_in_folder_names_file_and_label_line(image_folder):
    (image_folder / "images/000000/0001.jpg").write_bytes(b"\x89PNG broken")
    dataset = FaceIdentificationDataset(str(image_folder), str(image_folder / "label.txt"), DECODE)
    message = read_error(dataset, 1)
    assert message == (f"{image_folder / 'images/000000/0001.jpg'} ({image_folder / 'label.txt'}:2): "
                       f"cannot decode image (not a JPEG/PNG, or truncated)")
    np.testing.assert_array_equal(dataset.read_sample(0)[1], 0)
