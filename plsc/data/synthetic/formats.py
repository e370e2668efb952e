"""Synthetic faces written in the public formats: a face-release `.rec`/`.idx`/`property` and an LFW-style `.bin`.

These files exercise every reader and converter on a machine without the real datasets. Images
come from `plsc.data.synthetic` with its per-image random streams, so image j of identity k is the
same picture here as in the in-memory synthetic dataset with the same seed.
"""
import os

import cv2
import numpy as np

from plsc.data import verification_bin
from plsc.data.progress import NO_PROGRESS
from plsc.data.recordio import RecordWriter, pack_record
from plsc.data.synthetic.identity import make_identity
from plsc.data.synthetic.render import render_face
from plsc.data.synthetic.streams import pair_image_rng, pair_plan_rng, train_image_rng


def encode_jpeg(image_rgb):
    """RGB uint8 [H, W, 3] -> JPEG bytes (OpenCV encodes BGR, as the releases' JPEGs were made)."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return encoded.tobytes()


def render_training_image(seed, identity, image_index):
    """Image `image_index` of `identity` in a training set -> RGB uint8 [112, 112, 3]."""
    image_rgb, _ = render_face(identity, train_image_rng(seed, identity.index, image_index))
    return image_rgb


def write_recordio(out_dir, num_classes, images_per_class, seed=0, with_header=True, progress=NO_PROGRESS):
    """Write `train.rec`, `train.idx` and `property` for num_classes x images_per_class images, telling
    `progress` (plsc.data.progress) of each.

    With `with_header` the face-release layout: record 0 holds labels [a, b], images are keys
    1 .. a-1 in class order, and keys a .. b-1 are identity records with [start, end) key ranges.
    Without it images are keys 0 .. N-1 and only their headers carry the labels.
    """
    os.makedirs(out_dir, exist_ok=True)
    num_images = num_classes * images_per_class
    first_image_key = 1 if with_header else 0
    first_identity_key = first_image_key + num_images
    rec_path, idx_path = os.path.join(out_dir, "train.rec"), os.path.join(out_dir, "train.idx")
    image_shape = None
    with RecordWriter(rec_path, idx_path) as writer:
        if with_header:
            writer.write(0, pack_record((0, [first_identity_key, first_identity_key + num_classes], 0, 0)))
        for class_index in range(num_classes):
            identity = make_identity(seed, class_index)
            for image_index in range(images_per_class):
                image_rgb = render_training_image(seed, identity, image_index)
                image_shape = image_rgb.shape
                key = first_image_key + class_index * images_per_class + image_index
                writer.write(key, pack_record((0, class_index, key, 0), encode_jpeg(image_rgb)))
                progress.update()
        if with_header:
            for class_index in range(num_classes):
                start = first_image_key + class_index * images_per_class
                writer.write(first_identity_key + class_index,
                             pack_record((0, [start, start + images_per_class], 0, 0)))
    height, width = image_shape[:2] if image_shape is not None else (112, 112)
    property_path = os.path.join(out_dir, "property")
    with open(property_path, "w", encoding="ascii") as handle:
        handle.write(f"{num_classes},{height},{width}")
    return {"rec": rec_path, "idx": idx_path, "property": property_path,
            "images": num_images, "classes": num_classes}


def pair_plan(num_pairs, seed, identity_offset):
    """Identities of each verification pair and whether they match -> (identities int64 [P, 2], issame bool [P]).

    Half the pairs (rounded up) match, in a seeded random order; every pair draws its own
    identities from `identity_offset` on, so none overlaps another pair or a training class.
    """
    issame = np.arange(num_pairs) % 2 == 0
    issame = issame[pair_plan_rng(seed).permutation(num_pairs)]
    first = identity_offset + 2 * np.arange(num_pairs, dtype=np.int64)
    second = np.where(issame, first, first + 1)
    return np.stack([first, second], axis=1), issame


def write_bin(out_path, num_pairs, seed, identity_offset=1_000_000, progress=NO_PROGRESS):
    """Write an LFW-style `.bin` of `num_pairs` JPEG pairs of held-out identities, telling `progress` of each
    image; returns issame [P]."""
    identities, issame = pair_plan(num_pairs, seed, identity_offset)
    images = []
    for pair_index, pair_identities in enumerate(identities):
        for side, identity_index in enumerate(pair_identities):
            identity = make_identity(seed, int(identity_index))
            image_rgb, _ = render_face(identity, pair_image_rng(seed, pair_index, side))
            images.append(encode_jpeg(image_rgb))
            progress.update()
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    verification_bin.write_bin(out_path, images, issame)
    return issame
