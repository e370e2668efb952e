"""RecordIO: byte layouts built by hand from the format description, writer round trips, corrupt files."""
import os
import pickle
import struct

import numpy as np
import pytest

from plsc.data import recordio
from plsc.data.recordio import (FaceRecordIndex, IRHeader, RecordReader, RecordWriter, class_label, pack_record,
                                unpack_record)
from plsc.errors import PlscError

MAGIC = 0xCED7230A
MAGIC_LE = struct.pack("<I", MAGIC)


# ---- the format, spelled out independently of plsc.data.recordio -------------------------------
def chunk_bytes(cflag, data):
    """magic, lrecord (cflag in the top 3 bits, length in the low 29), data, zero padding to 4."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


def header_bytes(flag, label, record_id=0, record_id2=0, labels=()):
    return struct.pack("<IfQQ", flag, label, record_id, record_id2) + struct.pack(f"<{len(labels)}f", *labels)


def write_by_hand(directory, records, idx_lines=None):
    """records: list of (key, [stored chunk bytes...]) -> train.rec/train.idx; returns their paths."""
    rec_path, idx_path = os.path.join(directory, "train.rec"), os.path.join(directory, "train.idx")
    offsets, blob = {}, b""
    for key, chunks in records:
        offsets[key] = len(blob)
        blob += b"".join(chunks)
    with open(rec_path, "wb") as handle:
        handle.write(blob)
    with open(idx_path, "w") as handle:
        handle.write(idx_lines if idx_lines is not None else "".join(f"{k}\t{o}\n" for k, o in offsets.items()))
    return rec_path, idx_path, offsets


def parse_chunks(blob):
    """Walk a .rec by hand -> list of (cflag, data) in file order."""
    chunks, position = [], 0
    while position < len(blob):
        magic, lrecord = struct.unpack_from("<II", blob, position)
        assert magic == MAGIC
        length = lrecord & ((1 << 29) - 1)
        chunks.append((lrecord >> 29, blob[position + 8:position + 8 + length]))
        position += 8 + length + (-length % 4)
    return chunks


@pytest.fixture
def hand_built_release(tmp_path):
    """A face release built with struct: header, images (flag 0, flag 3, split in 3 chunks), identities."""
    rng = np.random.default_rng(0)
    jpeg = lambda n: b"\xff\xd8\xff" + rng.integers(1, 255, n, dtype=np.uint8).tobytes()  # noqa: E731
    image_payloads = {
        1: header_bytes(0, 0.0, 1) + jpeg(29),
        2: header_bytes(0, 0.0, 2) + jpeg(40),
        # flag 3: labels follow the header; the class is the first of them
        3: header_bytes(3, 0.0, 3, labels=(1.0, 7.5, -2.0)) + jpeg(13),
    }
    # Key 4 contains the magic word at two 4-aligned offsets: MXNet stores it as chunks 1, 2, 3
    # without those words, and its reader puts them back between chunks.
    pieces = [header_bytes(0, 1.0, 4) + jpeg(9), jpeg(16)[3:] + b"abc", jpeg(6)]  # lengths 36, 16, 9
    image_payloads[4] = MAGIC_LE.join(pieces)
    stored = {key: [chunk_bytes(0, payload)] for key, payload in image_payloads.items()}
    stored[4] = [chunk_bytes(1, pieces[0]), chunk_bytes(2, pieces[1]), chunk_bytes(3, pieces[2])]
    # header record 0: images are keys 1..4, identity records are keys 5..6
    identity_payloads = {5: header_bytes(2, 0.0, labels=(1.0, 4.0)), 6: header_bytes(2, 0.0, labels=(4.0, 5.0))}
    records = [(0, [chunk_bytes(0, header_bytes(2, 0.0, labels=(5.0, 7.0)))])]
    records += [(key, stored[key]) for key in sorted(stored)]
    records += [(key, [chunk_bytes(0, payload)]) for key, payload in identity_payloads.items()]
    rec_path, idx_path, offsets = write_by_hand(str(tmp_path), records)
    return rec_path, idx_path, image_payloads, offsets


# ---- reading hand-built files -------------------------------------------------------------------
def test_reader_returns_hand_built_payloads_and_reassembles_chunks(hand_built_release):
    rec_path, idx_path, image_payloads, _ = hand_built_release
    reader = RecordReader(rec_path, idx_path)
    assert reader.keys.tolist() == [0, 1, 2, 3, 4, 5, 6]
    for key, payload in image_payloads.items():
        assert reader.read(key) == payload
    assert MAGIC_LE in reader.read(4)


def test_unpack_hand_built_headers(hand_built_release):
    rec_path, idx_path, image_payloads, _ = hand_built_release
    reader = RecordReader(rec_path, idx_path)
    header, image = reader.read_unpacked(3)
    assert header.flag == 3 and header.id == 3
    np.testing.assert_array_equal(header.labels, np.array([1.0, 7.5, -2.0], dtype=np.float32))
    assert header.labels.dtype == np.float32
    assert image == image_payloads[3][24 + 12:]
    header, image = reader.read_unpacked(2)
    assert header.flag == 0 and header.labels == 0.0 and image == image_payloads[2][24:]


def test_face_index_interprets_header_and_identity_records(hand_built_release, tmp_path):
    rec_path, idx_path, image_payloads, _ = hand_built_release
    index = FaceRecordIndex(RecordReader(rec_path, idx_path))
    assert index.image_keys.tolist() == [1, 2, 3, 4]
    assert index.identity_keys.tolist() == [5, 6]
    assert index.num_classes == 2
    assert [index.identity_range(i) for i in range(2)] == [(1, 4), (4, 5)]
    assert [index.read(i)[0] for i in range(4)] == [0, 0, 1, 1]
    assert index.read(3)[1] == image_payloads[4][24:]
    assert index.property is None
    (tmp_path / "property").write_text("2,112,112\n")
    assert FaceRecordIndex(RecordReader(rec_path, idx_path)).property == (2, (112, 112))


def test_face_index_without_header_lists_idx_keys_and_counts_classes_lazily(tmp_path):
    labels = {10: 3.0, 11: 0.0, 12: 5.0, 13: 1.0}
    records = [(key, [chunk_bytes(0, header_bytes(0, label, key) + b"img")]) for key, label in labels.items()]
    rec_path, idx_path, _ = write_by_hand(str(tmp_path), records)
    reader = RecordReader(rec_path, idx_path)
    read_keys = []
    original_read = reader.read
    reader.read = lambda key: read_keys.append(key) or original_read(key)
    index = FaceRecordIndex(reader)
    assert index.image_keys.tolist() == [10, 11, 12, 13]
    assert read_keys == []  # no key 0 here, so nothing needs reading until asked
    assert index.num_classes == 6
    assert sorted(read_keys) == [10, 11, 12, 13]
    assert index.num_classes == 6 and len(read_keys) == 4  # cached


def test_property_gives_num_classes_when_there_are_no_identity_records(tmp_path):
    records = [(key, [chunk_bytes(0, header_bytes(0, 1.0, key) + b"img")]) for key in range(3)]
    rec_path, idx_path, _ = write_by_hand(str(tmp_path), records)
    (tmp_path / "property").write_text("9,112,96")
    index = FaceRecordIndex(RecordReader(rec_path, idx_path))
    assert index.image_keys.tolist() == [0, 1, 2]  # record 0 has flag 0: it is an image
    assert index.num_classes == 9 and index.property == (9, (112, 96))


def test_idx_may_list_keys_out_of_order_with_spaces(tmp_path):
    records = [(key, [chunk_bytes(0, bytes([key]) * (key + 1))]) for key in (7, 2, 5)]
    rec_path, idx_path, offsets = write_by_hand(str(tmp_path), records, idx_lines=None)
    with open(idx_path, "w") as handle:
        handle.write(f"5 {offsets[5]}\r\n\n7\t{offsets[7]}\n2\t{offsets[2]}")
    reader = RecordReader(rec_path, idx_path)
    assert reader.keys.tolist() == [5, 7, 2]
    assert [reader.read(key) for key in (2, 5, 7)] == [b"\2" * 3, b"\5" * 6, b"\7" * 8]


# ---- writing -------------------------------------------------------------------------------------
def test_pack_unpack_round_trip():
    header, image = unpack_record(pack_record((0, 42, 7, 9), b"jpegbytes"))
    assert header == IRHeader(0, 42.0, 7, 9) and image == b"jpegbytes"
    header, image = unpack_record(pack_record(IRHeader(0, [3, 0.25], 1, 2), b"x"))
    assert header.flag == 2 and header.id == 1 and header.id2 == 2 and image == b"x"
    np.testing.assert_array_equal(header.labels, np.array([3, 0.25], np.float32))
    assert class_label(header) == 3
    # the packed bytes follow the struct layout of the format
    assert pack_record((0, [1.5], 0, 0), b"z") == header_bytes(1, 0.0, labels=(1.5,)) + b"z"


def test_writer_reader_round_trip_and_chunks_at_aligned_magic(tmp_path):
    rng = np.random.default_rng(1)
    payloads = {
        0: b"",
        1: rng.integers(0, 256, 1001, dtype=np.uint8).tobytes(),
        2: b"abcd" + MAGIC_LE + b"efgh" + MAGIC_LE + b"ij",   # aligned at 4 and 12: chunks 1, 2, 3
        3: b"a" + MAGIC_LE + b"xyz",                         # unaligned: stays one record
        4: MAGIC_LE,                                          # two empty chunks
        5: b"abcd" + MAGIC_LE,                                # ends with the magic word
    }
    rec_path, idx_path = str(tmp_path / "a.rec"), str(tmp_path / "a.idx")
    with RecordWriter(rec_path, idx_path) as writer:
        for key, payload in payloads.items():
            writer.write(key, payload)
    reader = RecordReader(rec_path, idx_path)
    assert {key: reader.read(key) for key in payloads} == payloads
    blob = open(rec_path, "rb").read()
    chunks = parse_chunks(blob)
    assert [flag for flag, _ in chunks] == [0, 0, 1, 2, 3, 0, 1, 3, 1, 3]
    assert [data for _, data in chunks[2:5]] == [b"abcd", b"efgh", b"ij"]
    assert chunks[6:] == [(1, b""), (3, b""), (1, b"abcd"), (3, b"")]
    for _, data in chunks:  # no stored chunk holds the magic word at an aligned offset
        assert all(data[i:i + 4] != MAGIC_LE for i in range(0, len(data) - 3, 4))
    assert len(blob) % 4 == 0


def test_writer_refuses_chunk_longer_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(recordio, "MAX_CHUNK_LENGTH", 8)
    rec_path, idx_path = str(tmp_path / "a.rec"), str(tmp_path / "a.idx")
    with RecordWriter(rec_path, idx_path) as writer:
        writer.write(0, b"12345678" + MAGIC_LE + b"abcdefgh")  # two chunks of 8: fine
        with pytest.raises(PlscError, match=r"a\.rec key 1: .*9 bytes"):
            writer.write(1, b"123456789")
    assert RecordReader(rec_path, idx_path).read(0) == b"12345678" + MAGIC_LE + b"abcdefgh"


def test_writer_leaves_nothing_under_final_names_when_interrupted(tmp_path):
    rec_path, idx_path = tmp_path / "a.rec", tmp_path / "a.idx"
    with pytest.raises(RuntimeError):
        with RecordWriter(rec_path, idx_path) as writer:
            writer.write(0, b"data")
            assert (tmp_path / "a.rec.tmp").exists() and not rec_path.exists()
            raise RuntimeError("interrupted")
    assert not rec_path.exists() and not idx_path.exists() and not (tmp_path / "a.rec.tmp").exists()


def test_writer_face_layout_round_trip(tmp_path):
    classes = [0, 0, 1, 2, 2, 2]
    rec_path, idx_path = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    first_identity = 1 + len(classes)
    with RecordWriter(rec_path, idx_path) as writer:
        writer.write(0, pack_record((0, [first_identity, first_identity + 3], 0, 0)))
        for position, label in enumerate(classes):
            labels = [label, 0.5] if position % 2 else label  # flag > 0 on every other image
            writer.write(position + 1, pack_record((0, labels, position + 1, 0), b"img%d" % position))
        for identity, (start, end) in enumerate([(1, 3), (3, 4), (4, 7)]):
            writer.write(first_identity + identity, pack_record((0, [start, end], 0, 0)))
    index = FaceRecordIndex(RecordReader(rec_path, idx_path))
    assert index.image_keys.tolist() == [1, 2, 3, 4, 5, 6]
    assert [index.read(i) for i in range(6)] == [(label, b"img%d" % i) for i, label in enumerate(classes)]
    assert [index.identity_range(i) for i in range(3)] == [(1, 3), (3, 4), (4, 7)]
    assert index.num_classes == 3


# ---- processes -----------------------------------------------------------------------------------
def test_reader_pickles_without_handle_and_reopens_after_fork(hand_built_release):
    rec_path, idx_path, image_payloads, _ = hand_built_release
    reader = RecordReader(rec_path, idx_path)
    assert reader.read(1) == image_payloads[1]  # the parent's handle is open now
    clone = pickle.loads(pickle.dumps(reader))  # what a spawned DataLoader worker receives
    assert clone._handle is None and clone.read(3) == image_payloads[3]
    parent_handle = reader._handle
    pid = os.fork()
    if pid == 0:  # a forked worker inherits the open handle object and must open its own
        same = reader.read(4) == image_payloads[4] and reader.read(2) == image_payloads[2]
        own = reader._handle_pid == os.getpid() and reader._handle is not parent_handle
        os._exit(0 if same and own else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reader._handle is parent_handle and reader._handle_pid == os.getpid()
    assert reader.read(2) == image_payloads[2]


# ---- corrupt files -------------------------------------------------------------------------------
def test_truncated_record_names_file_and_key(hand_built_release):
    rec_path, idx_path, _, offsets = hand_built_release
    with open(rec_path, "r+b") as handle:
        handle.truncate(offsets[6] + 12)  # record 6 claims more bytes than remain
    with pytest.raises(PlscError, match=r"train\.rec key 6: truncated record"):
        RecordReader(rec_path, idx_path).read(6)


def test_truncated_inside_a_split_record(hand_built_release):
    rec_path, idx_path, _, offsets = hand_built_release
    with open(rec_path, "r+b") as handle:
        handle.truncate(offsets[4] + 8 + 36 + 4)  # the second chunk's header is cut in half
    with pytest.raises(PlscError, match=r"train\.idx: key 5 has offset \d+ past the end"):
        RecordReader(rec_path, idx_path)
    with open(idx_path, "w") as handle:
        handle.write(f"4\t{offsets[4]}\n")
    with pytest.raises(PlscError, match=r"train\.rec key 4: truncated record"):
        RecordReader(rec_path, idx_path).read(4)


def test_bad_magic_names_file_key_and_offset(hand_built_release):
    rec_path, idx_path, _, offsets = hand_built_release
    with open(rec_path, "r+b") as handle:
        handle.seek(offsets[2])
        handle.write(b"\xde\xad\xbe\xef")
    reader = RecordReader(rec_path, idx_path)
    with pytest.raises(PlscError, match=rf"train\.rec key 2: bad magic 0xefbeadde at offset {offsets[2]}"):
        reader.read(2)
    assert reader.read(1)  # neighbours unaffected


def test_idx_pointing_into_a_record_is_bad_magic(hand_built_release):
    rec_path, idx_path, _, offsets = hand_built_release
    with open(idx_path, "w") as handle:
        handle.write(f"1\t{offsets[1] + 4}\n")
    with pytest.raises(PlscError, match=r"key 1: bad magic"):
        RecordReader(rec_path, idx_path).read(1)


def test_corrupt_length_fails_fast(hand_built_release):
    rec_path, idx_path, _, offsets = hand_built_release
    with open(rec_path, "r+b") as handle:
        handle.seek(offsets[1] + 4)
        handle.write(struct.pack("<I", (1 << 29) - 1))
    with pytest.raises(PlscError, match=r"key 1: truncated record .*claims 536870911 bytes"):
        RecordReader(rec_path, idx_path).read(1)


def test_continuation_chunk_without_a_first_chunk(tmp_path):
    rec_path, idx_path, _ = write_by_hand(str(tmp_path), [(0, [chunk_bytes(2, b"abcd")])])
    with pytest.raises(PlscError, match=r"key 0: chunk at offset 0 has continuation flag 2"):
        RecordReader(rec_path, idx_path).read(0)


def test_idx_offset_past_end_of_rec(hand_built_release):
    rec_path, idx_path, _, offsets = hand_built_release
    size = os.path.getsize(rec_path)
    with open(idx_path, "a") as handle:
        handle.write(f"99\t{size}\n")
    with pytest.raises(PlscError, match=rf"train\.idx: key 99 has offset {size} past the end of .*train\.rec"):
        RecordReader(rec_path, idx_path)


@pytest.mark.parametrize("bad_line", ["3\tabc", "3\t1.5", "3\t4\t5", "three", "3\t-4"])
def test_non_integer_idx_line_names_line_number(hand_built_release, bad_line):
    rec_path, idx_path, _, offsets = hand_built_release
    with open(idx_path, "w") as handle:
        handle.write(f"0\t{offsets[0]}\n\n{bad_line}\n1\t{offsets[1]}\n")
    with pytest.raises(PlscError, match=r"train\.idx:3: expected 'key<TAB>offset'"):
        RecordReader(rec_path, idx_path)


def test_unknown_key_and_missing_files(hand_built_release, tmp_path):
    rec_path, idx_path, _, _ = hand_built_release
    with pytest.raises(PlscError, match=r"train\.idx: unknown key 42"):
        RecordReader(rec_path, idx_path).read(42)
    with pytest.raises(PlscError, match=r"nothere\.rec: no such file"):
        RecordReader(str(tmp_path / "nothere.rec"), idx_path)


def test_duplicate_idx_key(hand_built_release):
    rec_path, idx_path, _, offsets = hand_built_release
    with open(idx_path, "w") as handle:
        handle.write(f"2\t{offsets[2]}\n1\t{offsets[1]}\n2\t{offsets[2]}\n")
    with pytest.raises(PlscError, match=r"key 2 appears more than once"):
        RecordReader(rec_path, idx_path)
