"""MXNet RecordIO (`.rec` + `.idx`) in pure Python: record framing, IRHeader, reader, writer, face layout.

Framing (dmlc-core): each record is `uint32 magic, uint32 lrecord, payload, zero padding to 4 bytes`,
with `lrecord = cflag << 29 | length`. A payload is stored in several chunks (cflag 1 first, 2 middle,
3 last) where it contains the magic word at a 4-byte aligned offset: the writer drops that word and
starts a new chunk, and the reader puts the magic word back between chunks. This keeps the magic
word out of the stored bytes, so a reader that lost its place can resynchronise on it.
"""
import os
import re
import struct
from collections import namedtuple

import numpy as np

from plsc.errors import PlscError

RECORD_MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", RECORD_MAGIC)
FRAME_HEADER = struct.Struct("<II")  # magic, lrecord
LENGTH_BITS = 29
LENGTH_MASK = (1 << LENGTH_BITS) - 1
CFLAG_WHOLE, CFLAG_FIRST, CFLAG_MIDDLE, CFLAG_LAST = 0, 1, 2, 3

# Longest chunk the writer emits; the 29-bit length field caps it. A module constant so tests can
# lower it. A payload can only be split where it holds an aligned magic word (readers insert that
# word between chunks), so a longer stretch without one cannot be stored and the writer refuses it
# (MXNet's writer refuses any payload of 2**29 bytes or more).
MAX_CHUNK_LENGTH = LENGTH_MASK

IRHEADER = struct.Struct("<IfQQ")  # flag, label, id, id2

IRHeader = namedtuple("IRHeader", ["flag", "labels", "id", "id2"])
IRHeader.__doc__ = ("Image record header; `labels` is a float scalar when flag == 0, "
                    "else a float32 array of `flag` labels.")


def encode_lrecord(cflag, length):
    """Pack a continuation flag (3 bits) and a chunk length (29 bits) into one uint32."""
    return (cflag << LENGTH_BITS) | length


def decode_lrecord(lrecord):
    """uint32 lrecord -> (cflag, length)."""
    return lrecord >> LENGTH_BITS, lrecord & LENGTH_MASK


def padded_length(length):
    """Bytes a chunk of `length` bytes occupies after zero padding to a multiple of 4."""
    return (length + 3) & ~3


def split_at_magic(payload):
    """Chunks of `payload` between its 4-byte aligned occurrences of the magic word (the word removed)."""
    payload = bytes(payload)
    chunks, chunk_start, search_from = [], 0, 0
    while True:
        found = payload.find(MAGIC_BYTES, search_from)
        if found < 0:
            break
        if found % 4 == 0:
            chunks.append(payload[chunk_start:found])
            chunk_start = found + 4
            search_from = found + 4
        else:
            search_from = found + 1
    chunks.append(payload[chunk_start:])
    return chunks


def frame_record(payload, max_chunk_length=None, where="record"):
    """Payload bytes -> framed bytes as stored in a `.rec` (one or more chunks, each padded)."""
    limit = MAX_CHUNK_LENGTH if max_chunk_length is None else max_chunk_length
    chunks = split_at_magic(payload)
    framed = bytearray()
    for position, chunk in enumerate(chunks):
        if len(chunk) > limit:
            raise PlscError(f"{where}: payload of {len(payload)} bytes has a stretch of {len(chunk)} bytes "
                            f"without a split point; RecordIO chunks hold at most {limit} bytes")
        if len(chunks) == 1:
            cflag = CFLAG_WHOLE
        elif position == 0:
            cflag = CFLAG_FIRST
        elif position == len(chunks) - 1:
            cflag = CFLAG_LAST
        else:
            cflag = CFLAG_MIDDLE
        framed += FRAME_HEADER.pack(RECORD_MAGIC, encode_lrecord(cflag, len(chunk)))
        framed += chunk
        framed += bytes(padded_length(len(chunk)) - len(chunk))
    return bytes(framed)


def read_framed_record(read_at, offset, file_size, where):
    """Reassemble the record whose first chunk starts at `offset`; `read_at(offset, size) -> bytes`.

    Every length is checked against `file_size` before anything is read, so a corrupt length field
    raises instead of reading garbage or waiting on a short read.
    """
    pieces, position, previous_cflag = [], offset, None
    while True:
        if position + FRAME_HEADER.size > file_size:
            raise PlscError(f"{where}: truncated record (header at offset {position} runs past the end "
                            f"of the file, {file_size} bytes)")
        magic, lrecord = FRAME_HEADER.unpack(read_at(position, FRAME_HEADER.size))
        if magic != RECORD_MAGIC:
            raise PlscError(f"{where}: bad magic 0x{magic:08x} at offset {position} "
                            f"(expected 0x{RECORD_MAGIC:08x})")
        cflag, length = decode_lrecord(lrecord)
        expected = (CFLAG_WHOLE, CFLAG_FIRST) if previous_cflag is None else (CFLAG_MIDDLE, CFLAG_LAST)
        if cflag not in expected:
            raise PlscError(f"{where}: chunk at offset {position} has continuation flag {cflag}, "
                            f"expected one of {expected}")
        payload_start = position + FRAME_HEADER.size
        if payload_start + length > file_size:
            raise PlscError(f"{where}: truncated record (chunk at offset {position} claims {length} bytes, "
                            f"the file ends at {file_size})")
        if previous_cflag is not None:
            pieces.append(MAGIC_BYTES)
        pieces.append(read_at(payload_start, length))
        if cflag in (CFLAG_WHOLE, CFLAG_LAST):
            return b"".join(pieces)
        previous_cflag = cflag
        position = payload_start + padded_length(length)


def pack_record(header, image_bytes=b""):
    """(flag, label(s), id, id2) + image bytes -> record payload; an array label sets flag = its size.

    As in MXNet, the flag is derived from the label: a scalar gives flag 0; a sequence of labels gives
    flag = len(labels), stored as float32 after the header, with the header's own label field 0.
    """
    _, labels, record_id, record_id2 = header
    if np.ndim(labels) == 0:
        return IRHEADER.pack(0, float(labels), int(record_id), int(record_id2)) + bytes(image_bytes)
    label_array = np.asarray(labels, dtype=np.float32).reshape(-1)
    return (IRHEADER.pack(label_array.size, 0.0, int(record_id), int(record_id2))
            + label_array.astype("<f4").tobytes() + bytes(image_bytes))


def unpack_record(payload, where="record"):
    """Record payload -> (IRHeader, image bytes); labels float32 [flag] when flag > 0, else a float."""
    if len(payload) < IRHEADER.size:
        raise PlscError(f"{where}: record of {len(payload)} bytes is shorter than the "
                        f"{IRHEADER.size}-byte IRHeader")
    flag, label, record_id, record_id2 = IRHEADER.unpack_from(payload, 0)
    if flag == 0:
        return IRHeader(0, label, record_id, record_id2), bytes(payload[IRHEADER.size:])
    labels_end = IRHEADER.size + 4 * flag
    if len(payload) < labels_end:
        raise PlscError(f"{where}: header says {flag} labels but the record has only {len(payload)} bytes")
    labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=IRHEADER.size).astype(np.float32)
    return IRHeader(flag, labels, record_id, record_id2), bytes(payload[labels_end:])


def class_label(header):
    """An image's class: the header label, or the first of its labels when flag > 0."""
    return int(header.labels[0]) if header.flag > 0 else int(header.labels)


# A line that is neither blank nor `key<whitespace>offset` (two non-negative integers).
_BAD_INDEX_LINE = re.compile(r"^(?![ \t]*[0-9]+[ \t]+[0-9]+[ \t]*\r?$|[ \t\r]*$).*$", re.MULTILINE)


def parse_index(text, idx_path):
    """`.idx` text (`key<TAB>offset` per line) -> (keys int64 [K], offsets int64 [K]) in file order."""
    bad_line = _BAD_INDEX_LINE.search(text)
    if bad_line is not None:
        line_number = text.count("\n", 0, bad_line.start()) + 1
        raise PlscError(f"{idx_path}:{line_number}: expected 'key<TAB>offset' with two non-negative "
                        f"integers, got {bad_line.group().strip()[:80]!r}")
    try:
        pairs = np.array(text.split(), dtype=np.int64).reshape(-1, 2)
    except OverflowError:
        raise PlscError(f"{idx_path}: a key or offset does not fit in 64 bits") from None
    return pairs[:, 0].copy(), pairs[:, 1].copy()


class RecordReader:
    """Random access to a `.rec` through its `.idx`; one file handle per process, opened lazily.

    DataLoader workers are forked or spawned copies of the dataset: the handle is dropped when pickled
    and reopened when the process id changes, so no two processes share a file offset.
    """

    def __init__(self, rec_path, idx_path):
        self.rec_path = str(rec_path)
        self.idx_path = str(idx_path)
        for path in (self.rec_path, self.idx_path):
            if not os.path.isfile(path):
                raise PlscError(f"{path}: no such file")
        with open(self.idx_path, encoding="utf-8", errors="replace") as index_file:
            self._keys, self._offsets = parse_index(index_file.read(), self.idx_path)
        self._sorted_keys, self._sorted_offsets = self._sorted_lookup()
        self.file_size = os.path.getsize(self.rec_path)
        beyond = np.flatnonzero(self._offsets + FRAME_HEADER.size > self.file_size)
        if beyond.size:
            key = self._keys[beyond[0]]
            raise PlscError(f"{self.idx_path}: key {key} has offset {self._offsets[beyond[0]]} past the end of "
                            f"{self.rec_path} ({self.file_size} bytes)")
        self._handle = None
        self._handle_pid = None

    def _sorted_lookup(self):
        """(keys ascending, their offsets) for binary search; the `.idx` arrays themselves when already sorted."""
        if np.all(self._keys[1:] > self._keys[:-1]):
            # The usual case: sharing the arrays keeps the copy pickled to each DataLoader worker small.
            return self._keys, self._offsets
        order = np.argsort(self._keys, kind="stable")
        sorted_keys = self._keys[order]
        repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        if repeated.size:
            raise PlscError(f"{self.idx_path}: key {sorted_keys[repeated[0]]} appears more than once")
        return sorted_keys, self._offsets[order]

    @property
    def keys(self):
        """Record keys in `.idx` order: int64 [K]."""
        return self._keys

    def __len__(self):
        return int(self._keys.size)

    def __contains__(self, key):
        position = np.searchsorted(self._sorted_keys, key)
        return bool(position < self._sorted_keys.size and self._sorted_keys[position] == key)

    def offset(self, key):
        """Byte offset of record `key` in the `.rec`."""
        position = int(np.searchsorted(self._sorted_keys, key))
        if position >= self._sorted_keys.size or self._sorted_keys[position] != key:
            raise PlscError(f"{self.idx_path}: unknown key {key}")
        return int(self._sorted_offsets[position])

    def read(self, key):
        """The payload of record `key` (continuation chunks reassembled): bytes."""
        return read_framed_record(self._read_at, self.offset(key), self.file_size,
                                  where=f"{self.rec_path} key {key}")

    def read_unpacked(self, key):
        """Record `key` -> (IRHeader, image bytes)."""
        return unpack_record(self.read(key), where=f"{self.rec_path} key {key}")

    def _read_at(self, offset, size):
        handle = self._file()
        handle.seek(offset)
        data = handle.read(size)
        if len(data) != size:
            # The file shrank after we measured it.
            raise PlscError(f"{self.rec_path}: truncated read of {size} bytes at offset {offset}")
        return data

    def _file(self):
        if self._handle is None or self._handle_pid != os.getpid():
            # After a fork the inherited handle shares its offset with the parent: open our own.
            self._handle = open(self.rec_path, "rb")
            self._handle_pid = os.getpid()
        return self._handle

    def close(self):
        """Close this process's handle (it reopens on the next read)."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._handle_pid = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        handle = self.__dict__.get("_handle")
        if handle is not None and self.__dict__.get("_handle_pid") == os.getpid():
            handle.close()


class RecordWriter:
    """Write a `.rec` + `.idx` pair; the files appear under their names only when `close()` succeeds.

    Records go to `<name>.tmp` files that are renamed on close (the `.rec` first, the `.idx` last),
    so an interrupted run leaves no `.idx`, or an old one, never a half-written pair under the final
    names. Leaving the `with` block on an exception discards the temporary files.
    """

    def __init__(self, rec_path, idx_path):
        self.rec_path = str(rec_path)
        self.idx_path = str(idx_path)
        self._rec_tmp = self.rec_path + ".tmp"
        self._idx_tmp = self.idx_path + ".tmp"
        self._rec_file = open(self._rec_tmp, "wb")
        self._idx_file = open(self._idx_tmp, "w", encoding="ascii")
        self._position = 0
        self._written_keys = set()

    def write(self, key, payload):
        """Append record `key` (a non-negative int, unique in this file) holding `payload` bytes."""
        key = int(key)
        if key < 0:
            raise ValueError(f"record keys are non-negative, got {key}")
        if key in self._written_keys:
            raise ValueError(f"record key {key} written twice to {self.rec_path}")
        framed = frame_record(payload, where=f"{self.rec_path} key {key}")
        self._rec_file.write(framed)
        self._idx_file.write(f"{key}\t{self._position}\n")
        self._written_keys.add(key)
        self._position += len(framed)

    def close(self):
        """Flush and move the finished files to their final names."""
        if self._rec_file.closed:
            return
        for handle in (self._rec_file, self._idx_file):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        os.replace(self._rec_tmp, self.rec_path)
        os.replace(self._idx_tmp, self.idx_path)

    def abort(self):
        """Close and delete the temporary files; the final names are left untouched."""
        for handle in (self._rec_file, self._idx_file):
            handle.close()
        for path in (self._rec_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_property(directory):
    """`property` beside a face release (`num_classes,height,width`) -> (num_classes, (h, w)) or None."""
    path = os.path.join(str(directory), "property")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        text = handle.read().strip()
    fields = [field.strip() for field in text.split(",")]
    if len(fields) != 3 or not all(field.isdigit() for field in fields):
        raise PlscError(f"{path}: expected 'num_classes,height,width', got {text[:80]!r}")
    num_classes, height, width = map(int, fields)
    return num_classes, (height, width)


# Smallest record a `.rec` can hold: the frame header and an IRHeader. Any count of records a
# header claims is checked against file_size // this before arrays of that size are made.
MIN_RECORD_BYTES = FRAME_HEADER.size + IRHEADER.size


class FaceRecordIndex:
    """Image keys, labels and identity ranges of a face release (MS1M / Glint360K / WebFace layout).

    The face releases' record 0 is a layout header: flag > 0, labels [a, b] and no image bytes. Images
    are then keys 1 .. a-1 and keys a .. b-1 are identity records whose labels are that identity's
    [start, end) image key range. Any other `.rec` (MXNet's im2rec output, with scalar labels or with
    `--pack-label` arrays, whose record 0 is an image) lists its images by the `.idx` keys.
    """

    def __init__(self, reader):
        self.reader = reader
        self.identity_keys = np.zeros(0, dtype=np.int64)
        header, payload = reader.read_unpacked(0) if 0 in reader else (None, b"")
        if header is not None and header.flag > 0 and len(payload) == 0:
            self.image_keys, self.identity_keys = self._layout_keys(header)
        else:
            self.image_keys = np.asarray(reader.keys, dtype=np.int64)
        self.property = read_property(os.path.dirname(os.path.abspath(reader.rec_path)))
        self._num_classes = None

    def _layout_keys(self, header):
        """(image keys [a-1], identity keys [b-a]) of the layout header, sized against the file first."""
        where = f"{self.reader.rec_path} key 0"
        if header.flag < 2:
            raise PlscError(f"{where}: layout header needs labels [a, b], has {header.flag} label(s)")
        first_identity, identity_end = float(header.labels[0]), float(header.labels[1])
        if not (first_identity.is_integer() and identity_end.is_integer()
                and 1 <= first_identity <= identity_end):
            raise PlscError(f"{where}: layout header labels [{header.labels[0]:g}, {header.labels[1]:g}] "
                            f"are not whole numbers with 1 <= a <= b")
        first_identity, identity_end = int(first_identity), int(identity_end)
        most_records = self.reader.file_size // MIN_RECORD_BYTES
        if identity_end - 1 > most_records:
            raise PlscError(f"{where}: layout header claims {identity_end - 1} image and identity records; "
                            f"{self.reader.rec_path} ({self.reader.file_size} bytes) holds at most {most_records}")
        return (np.arange(1, first_identity, dtype=np.int64),
                np.arange(first_identity, identity_end, dtype=np.int64))

    @property
    def has_identity_records(self):
        return self.identity_keys.size > 0

    def __len__(self):
        return int(self.image_keys.size)

    def read(self, image_index):
        """Image number `image_index` (0-based over `image_keys`) -> (class label, encoded image bytes)."""
        key = int(self.image_keys[image_index])
        header, image_bytes = self.reader.read_unpacked(key)
        return class_label(header), image_bytes

    def identity_range(self, identity_index):
        """[start, end) image keys of identity `identity_index` (0-based over `identity_keys`)."""
        key = int(self.identity_keys[identity_index])
        header, _ = self.reader.read_unpacked(key)
        if header.flag < 2 or not np.all(np.isfinite(header.labels[:2])):
            raise PlscError(f"{self.reader.rec_path} key {key}: identity record needs labels [start, end)")
        return int(header.labels[0]), int(header.labels[1])

    @property
    def num_classes(self):
        """Identity record count, else `property`, else max label + 1 over all image headers (slow, cached)."""
        if self._num_classes is None:
            if self.has_identity_records:
                self._num_classes = int(self.identity_keys.size)
            elif self.property is not None:
                self._num_classes = self.property[0]
            else:
                self._num_classes = 1 + max((self.read(index)[0] for index in range(len(self))), default=-1)
        return self._num_classes
