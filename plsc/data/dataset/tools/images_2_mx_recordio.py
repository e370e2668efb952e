"""Pack an image folder into a face-release `.rec` (MS1M / Glint360K / WebFace layout), without MXNet.

    python -m plsc.data.dataset.tools.images_2_mx_recordio --image_root D --cls_label_path label.txt \
        --output_dir O [--shuffle] [--quality Q] [--num_workers N]
    python -m plsc.data.dataset.tools.images_2_mx_recordio --image_root D --from_folders --output_dir O

Writes `O/train.rec`, `O/train.idx` and `O/property` (`num_classes,112,112`). Record 0 is the layout
header (flag 2, labels [a, b]); keys 1 .. a-1 are the images grouped by class in class order, each
with its class as header label; keys a .. b-1 are one identity record per class whose labels are
that class's [start, end) image keys. A class without images gets an empty range.

Images that are already 112x112 JPEG or PNG are stored byte for byte; other sizes are resized
(with a warning) and, like any other encoding, stored as JPEG. `--quality Q` re-encodes every image
as JPEG of quality Q. All files are written under temporary names and renamed when complete.
"""
import argparse
import multiprocessing
import os
import signal
import sys
import time

import cv2
import numpy as np

from plsc.data.dataset.face_identification import read_label_file
from plsc.data.dataset.tools import run_command, write_bytes_atomically
from plsc.data.progress import Progress
from plsc.data.recordio import RecordWriter, pack_record
from plsc.errors import PlscError

IMAGE_SIZE = 112
# Encoded image formats the face readers accept as they are (file signatures).
PASSTHROUGH_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
FOLDER_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_JPEG_QUALITY = 95
# Identity records store image keys as float32 labels, exact only up to 2**24.
MAX_EXACT_KEY = 2 ** 24
# Images handed to a worker at a time: large enough to amortise the inter-process traffic.
CHUNK_SIZE = 64


class ImageEntry:
    """One image to pack: its path, class, and where it came from (for error messages)."""

    __slots__ = ("path", "label", "source")

    def __init__(self, path, label, source):
        self.path, self.label, self.source = path, label, source


def entries_from_label_file(image_root, label_path):
    """`relative/path<TAB or space>label` lines -> list of ImageEntry; a bad label names its line."""
    entries = []
    for line_number, (relative_path, label_text) in read_label_file(label_path):
        if not label_text.isdigit():
            raise PlscError(f"{label_path}:{line_number}: label {label_text!r} is not a non-negative integer")
        entries.append(ImageEntry(os.path.join(image_root, relative_path), int(label_text),
                                  f"{label_path}:{line_number}"))
    return entries


def entries_from_folders(image_root):
    """One sub-folder per identity (sorted by name = class 0, 1, ...) -> (entries, folder names)."""
    if not os.path.isdir(image_root):
        raise PlscError(f"image_root is not a directory: {image_root}")
    folders = sorted(name for name in os.listdir(image_root) if os.path.isdir(os.path.join(image_root, name)))
    if not folders:
        raise PlscError(f"{image_root}: --from_folders expects one sub-folder per identity, found none")
    entries = []
    for label, folder in enumerate(folders):
        folder_path = os.path.join(image_root, folder)
        names = sorted(name for name in os.listdir(folder_path)
                       if name.lower().endswith(FOLDER_IMAGE_EXTENSIONS))
        entries += [ImageEntry(os.path.join(folder_path, name), label, os.path.join(folder_path, name))
                    for name in names]
    if not entries:
        raise PlscError(f"{image_root}: no images ({', '.join(FOLDER_IMAGE_EXTENSIONS)}) in its sub-folders")
    return entries, folders


def record_order(labels, shuffle, seed):
    """Positions of the images in record order: grouped by class, ascending; shuffled within a class."""
    labels = np.asarray(labels, dtype=np.int64)
    if not shuffle:
        return np.argsort(labels, kind="stable")
    # A class must occupy one contiguous key range, so only the order inside each class can change.
    tiebreak = np.random.default_rng(seed).permutation(labels.size)
    return np.lexsort((tiebreak, labels))


def prepare_image(path, source, quality):
    """Encoded image ready for a record -> (bytes, original (h, w) if it was resized else None, re-encoded)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise PlscError(f"{source}: cannot read image {path}: {error.strerror or error}") from None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise PlscError(f"{source}: {path} is not a decodable image")
    original_size = image.shape[:2]
    resized = original_size != (IMAGE_SIZE, IMAGE_SIZE)
    if not resized and quality is None and data.startswith(PASSTHROUGH_SIGNATURES):
        return data, None, False
    if resized:
        shrinking = min(original_size) >= IMAGE_SIZE
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE),
                           interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY,
                                               DEFAULT_JPEG_QUALITY if quality is None else int(quality)])
    if not ok:
        raise RuntimeError(f"cv2 could not encode {path} as JPEG")
    return encoded.tobytes(), (original_size if resized else None), True


def _prepare_chunk(task):
    """Worker: [(path, source), ...], quality -> [(bytes, resized_from, re_encoded), ...]."""
    items, quality = task
    return [prepare_image(path, source, quality) for path, source in items]


def _default_termination():
    """Workers end quietly when the pool terminates them (a forked child inherits Paddle's loud SIGTERM handler)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _chunks(entries, order, quality):
    for start in range(0, len(order), CHUNK_SIZE):
        yield ([(entries[i].path, entries[i].source) for i in order[start:start + CHUNK_SIZE]], quality)


def prepared_images(entries, order, quality, num_workers):
    """Yield (bytes, resized_from, re_encoded) for entries[order[0]], entries[order[1]], ... in order."""
    tasks = _chunks(entries, order, quality)
    if num_workers <= 1:
        for task in tasks:
            yield from _prepare_chunk(task)
        return
    context = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    with context.Pool(num_workers, initializer=_default_termination) as pool:
        for results in pool.imap(_prepare_chunk, tasks):
            yield from results


def _log_to_stderr(message):
    print(message, file=sys.stderr, flush=True)


def build_recordio(image_root, output_dir, cls_label_path=None, from_folders=False, shuffle=False, seed=0,
                   quality=None, num_workers=1, log=_log_to_stderr, progress=None):
    """Pack the images of a label list (or of one folder per identity) into `output_dir`; returns a summary.

    `progress`: True for a progress bar, False for log lines, None to decide by whether stderr is a terminal.
    """
    if quality is not None and not 1 <= int(quality) <= 100:
        raise PlscError(f"--quality {quality}: JPEG quality must be within 1 .. 100")
    if from_folders == (cls_label_path is not None):
        raise PlscError("give exactly one of --cls_label_path and --from_folders")
    if from_folders:
        entries, folders = entries_from_folders(image_root)
    else:
        if not os.path.isdir(image_root):
            raise PlscError(f"image_root is not a directory: {image_root}")
        entries, folders = entries_from_label_file(image_root, cls_label_path), None
    labels = np.array([entry.label for entry in entries], dtype=np.int64)
    num_classes = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=num_classes)
    empty_classes = np.flatnonzero(counts == 0)
    if empty_classes.size:
        log(f"warning: {empty_classes.size} of the classes 0 .. {num_classes - 1} have no image "
            f"(first: {empty_classes[0]}); they get empty identity records")
    order = record_order(labels, shuffle, seed)
    num_images = len(entries)
    first_identity_key = num_images + 1
    if first_identity_key + num_classes > MAX_EXACT_KEY:
        raise PlscError(f"{num_images} images + {num_classes} classes need record keys beyond 2**24, which "
                        f"the float32 labels of identity records cannot hold exactly; split the data set")
    os.makedirs(output_dir, exist_ok=True)
    rec_path, idx_path = os.path.join(output_dir, "train.rec"), os.path.join(output_dir, "train.idx")

    started = time.monotonic()
    resized, re_encoded = [], 0
    bar = Progress(num_images, "packing images", log, progress)
    try:
        with RecordWriter(rec_path, idx_path) as writer:
            writer.write(0, pack_record((2, [first_identity_key, first_identity_key + num_classes], 0, 0)))
            for key, (position, prepared) in enumerate(zip(order, prepared_images(entries, order, quality,
                                                                                   num_workers)), start=1):
                image_bytes, resized_from, was_re_encoded = prepared
                label = int(labels[position])
                writer.write(key, pack_record((0, label, key, 0), image_bytes))
                re_encoded += was_re_encoded
                if resized_from is not None:
                    resized.append((entries[position].source, resized_from))
                bar.update()
            # Images are grouped by class in class order: class c holds the keys after those of 0 .. c-1.
            range_ends = 1 + np.cumsum(counts)
            range_starts = range_ends - counts
            for label in range(num_classes):
                writer.write(first_identity_key + label,
                             pack_record((2, [range_starts[label], range_ends[label]], 0, 0)))
    finally:
        bar.close()
    write_bytes_atomically(os.path.join(output_dir, "property"),
                           f"{num_classes},{IMAGE_SIZE},{IMAGE_SIZE}".encode("ascii"))
    if folders is not None:
        classes_text = "".join(f"{label}\t{folder}\n" for label, folder in enumerate(folders))
        write_bytes_atomically(os.path.join(output_dir, "classes.txt"), classes_text.encode("utf-8"))
    seconds = time.monotonic() - started
    if resized:
        source, (height, width) = resized[0]
        log(f"warning: {len(resized)} images were not {IMAGE_SIZE}x{IMAGE_SIZE} and were resized "
            f"(first: {source}, {width}x{height}); face models expect aligned crops")
    return {"images": num_images, "classes": num_classes, "copied": num_images - re_encoded,
            "re_encoded": re_encoded, "resized": len(resized), "seconds": round(seconds, 2),
            "images_per_second": round(num_images / max(seconds, 1e-9), 1), "rec": rec_path}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pack images + label.txt (or one folder per identity) into "
                                                 "train.rec / train.idx / property (face-release layout)")
    parser.add_argument("--image_root", required=True, help="folder the label list's paths are relative to")
    parser.add_argument("--cls_label_path", default=None, help="label list: 'relative/path.jpg<TAB>label' lines")
    parser.add_argument("--from_folders", action="store_true",
                        help="no label list: each sub-folder of image_root is one identity (sorted by name)")
    parser.add_argument("--output_dir", required=True, help="where train.rec, train.idx and property are written")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the images within each identity")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle")
    parser.add_argument("--quality", type=int, default=None,
                        help="re-encode every image as JPEG of this quality (default: keep 112x112 JPEG/PNG as is)")
    parser.add_argument("--num_workers", type=int, default=1, help="processes decoding / encoding images")
    args = parser.parse_args(argv)
    return run_command(build_recordio, image_root=args.image_root, output_dir=args.output_dir,
                       cls_label_path=args.cls_label_path, from_folders=args.from_folders, shuffle=args.shuffle,
                       seed=args.seed, quality=args.quality, num_workers=args.num_workers)


if __name__ == "__main__":
    raise SystemExit(main())
