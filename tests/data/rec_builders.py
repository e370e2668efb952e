"""Small hand-made RecordIO sets for dataset tests: tiny JPEGs, face-release layout with knobs to break it."""
import os
import struct

import cv2
import numpy as np

from plsc.data.recordio import RecordWriter, pack_record

MAGIC = 0xCED7230A


def tiny_jpeg(seed, size=8):
    """A random size x size colour JPEG: bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    return encoded.tobytes()


def write_face_rec(directory, class_sizes, header_labels=None, image_bytes=None, identity_order=None,
                   identities_first=False, with_header=True, property_classes=None):
    """Write train.rec/.idx (and `property` when property_classes is given) for classes of `class_sizes` images.

    Images are keys 1.. in class order (0.. without the layout header). `header_labels[i]` overrides
    image i's header label, `image_bytes[i]` its encoded image; `identity_order` is the order in which
    the identity records list the classes. Returns (image keys [N], header labels [N]).
    """
    os.makedirs(directory, exist_ok=True)
    num_images = int(sum(class_sizes))
    true_labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    header_labels = true_labels if header_labels is None else np.asarray(header_labels)
    first_image_key = 1 if with_header else 0
    image_keys = first_image_key + np.arange(num_images)
    starts = first_image_key + np.concatenate([[0], np.cumsum(class_sizes)[:-1]]).astype(int)
    order = list(range(len(class_sizes))) if identity_order is None else list(identity_order)
    first_identity_key = first_image_key + num_images
    image_records = [(int(key), pack_record((0, float(header_labels[i]), int(key), 0),
                                            image_bytes[i] if image_bytes is not None else tiny_jpeg(i)))
                     for i, key in enumerate(image_keys)]
    identity_records = [(first_identity_key + position,
                         pack_record((0, [starts[c], starts[c] + class_sizes[c]], 0, 0)))
                        for position, c in enumerate(order)]
    with RecordWriter(os.path.join(directory, "train.rec"), os.path.join(directory, "train.idx")) as writer:
        if with_header:
            writer.write(0, pack_record((0, [first_identity_key, first_identity_key + len(order)], 0, 0)))
            groups = [identity_records, image_records] if identities_first else [image_records, identity_records]
        else:
            groups = [image_records]
        for group in groups:
            for key, payload in group:
                writer.write(key, payload)
    if property_classes is not None:
        with open(os.path.join(directory, "property"), "w") as handle:
            handle.write(f"{property_classes},112,112")
    return image_keys, header_labels


def read_idx(directory):
    """{key: offset} from train.idx, parsed by hand."""
    with open(os.path.join(directory, "train.idx")) as handle:
        return {int(key): int(offset) for key, offset in (line.split() for line in handle if line.strip())}


def parse_rec_by_hand(directory):
    """{key: (header label(s), image bytes)} walking train.idx/train.rec with struct (single-chunk records)."""
    with open(os.path.join(directory, "train.rec"), "rb") as handle:
        blob = handle.read()
    records = {}
    for key, offset in read_idx(directory).items():
        magic, lrecord = struct.unpack_from("<II", blob, offset)
        assert magic == MAGIC and lrecord >> 29 == 0, "test data should hold single-chunk records"
        payload = blob[offset + 8:offset + 8 + (lrecord & ((1 << 29) - 1))]
        flag, label, _, _ = struct.unpack_from("<IfQQ", payload)
        labels = struct.unpack_from(f"<{flag}f", payload, 24) if flag else label
        records[key] = (labels, payload[24 + 4 * flag:])
    return records
