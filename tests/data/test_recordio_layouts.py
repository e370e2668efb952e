"""Which records of a `.rec` are images: face-release header record vs im2rec files, sizes checked first."""
import os

import numpy as np
import pytest

from plsc.data.dataset.mx_record import MXRecordDataset
from plsc.data.recordio import FaceRecordIndex, RecordReader, RecordWriter, pack_record
from plsc.errors import PlscError
from tests.data.rec_builders import tiny_jpeg, write_face_rec


def write_records(directory, records):
    """records: [(key, label or labels, image bytes)] -> train.rec/.idx in `directory`."""
    os.makedirs(directory, exist_ok=True)
    with RecordWriter(os.path.join(directory, "train.rec"), os.path.join(directory, "train.idx")) as writer:
        for key, label, image in records:
            writer.write(key, pack_record((0, label, key, 0), image))
    return RecordReader(os.path.join(directory, "train.rec"), os.path.join(directory, "train.idx"))


def test_im2rec_scalar_labels_starting_at_key_0_are_all_images(tmp_path):
    labels = [2, 0, 1, 1, 0]
    reader = write_records(tmp_path, [(key, float(label), tiny_jpeg(key)) for key, label in enumerate(labels)])
    index = FaceRecordIndex(reader)
    assert index.image_keys.tolist() == [0, 1, 2, 3, 4] and not index.has_identity_records
    assert [index.read(i)[0] for i in range(len(index))] == labels
    assert index.num_classes == 3


def test_im2rec_pack_label_first_record_is_an_image_not_a_layout_header(tmp_path):
    # `--pack-label` stores label arrays; [4, 0] on record 0 once read as a header "[a, b]" and failed.
    packed = [[4.0, 0.0], [1.0, 7.0], [0.0, 3.0], [4.0, 1.0]]
    reader = write_records(tmp_path, [(key, labels, tiny_jpeg(key)) for key, labels in enumerate(packed)])
    index = FaceRecordIndex(reader)
    assert index.image_keys.tolist() == [0, 1, 2, 3] and not index.has_identity_records
    assert [index.read(i)[0] for i in range(len(index))] == [4, 1, 0, 4]  # class = the first label
    dataset = MXRecordDataset(str(tmp_path))
    assert dataset.labels.tolist() == [4, 1, 0, 4]


def test_face_release_header_record_has_an_empty_payload(tmp_path):
    keys, _ = write_face_rec(tmp_path, [2, 3, 1])
    index = FaceRecordIndex(RecordReader(tmp_path / "train.rec", tmp_path / "train.idx"))
    assert index.image_keys.tolist() == keys.tolist() == [1, 2, 3, 4, 5, 6]
    assert index.identity_keys.tolist() == [7, 8, 9]
    assert MXRecordDataset(str(tmp_path)).labels.tolist() == [0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("header_labels", [[1e15, 2e15], [2.0, 3e12]])
def test_header_counts_are_checked_against_the_file_size_before_allocating(tmp_path, header_labels):
    reader = write_records(tmp_path, [(0, header_labels, b""), (1, 0.0, tiny_jpeg(1))])
    size = os.path.getsize(tmp_path / "train.rec")
    with pytest.raises(PlscError, match=rf"key 0: .* holds at most {size // 32}$"):
        FaceRecordIndex(reader)


def test_fractional_header_labels_are_refused(tmp_path):
    reader = write_records(tmp_path, [(0, [1.5, 2.0], b""), (1, 0.0, tiny_jpeg(1))])
    with pytest.raises(PlscError, match="not whole numbers"):
        FaceRecordIndex(reader)


def test_labels_array_longer_than_the_record_is_refused(tmp_path):
    payload = bytearray(pack_record((0, [1.0, 2.0], 0, 0)))
    payload[0:4] = np.uint32(1 << 30).tobytes()  # flag: a billion labels in a 32-byte record
    os.makedirs(tmp_path, exist_ok=True)
    with RecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(0, bytes(payload))
    with pytest.raises(PlscError, match="header says 1073741824 labels"):
        FaceRecordIndex(RecordReader(tmp_path / "train.rec", tmp_path / "train.idx"))
