"""Unpack a face release `.rec` into an image folder + `label.txt` (PLSC's FaceIdentificationDataset format).

    python -m plsc.data.dataset.tools.mx_recordio_2_images --root_dir DIR --output_dir OUT

Reads `DIR/train.rec` and `DIR/train.idx`; writes `OUT/images/<key:08d>.jpg|png` holding each
record's encoded bytes unchanged, and `OUT/label.txt` lines `images/<key:08d>.jpg<TAB>label`.
Re-running skips images already on disk with the right size; `label.txt` is written last, so its
presence means the conversion finished.
"""
import argparse
import os

from tqdm import tqdm

from plsc.data.dataset.tools import run_command, write_bytes_atomically
from plsc.data.recordio import FaceRecordIndex, RecordReader, class_label
from plsc.errors import PlscError

# File signatures (magic bytes) of the encodings face releases use.
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))


def image_extension(image_bytes, where):
    """File extension for encoded image bytes, from their signature."""
    for signature, extension in IMAGE_SIGNATURES:
        if image_bytes.startswith(signature):
            return extension
    raise PlscError(f"{where}: image bytes are neither JPEG nor PNG (they start with {image_bytes[:8].hex()})")


def convert_recordio_to_images(root_dir, output_dir, progress=True):
    """`root_dir/train.{rec,idx}` -> `output_dir/images/*` + `output_dir/label.txt`; returns counts."""
    rec_path = os.path.join(root_dir, "train.rec")
    reader = RecordReader(rec_path, os.path.join(root_dir, "train.idx"))
    index = FaceRecordIndex(reader)
    os.makedirs(os.path.join(output_dir, "images"), exist_ok=True)
    label_lines, written, skipped, max_label = [], 0, 0, -1
    for key in tqdm(index.image_keys.tolist(), desc="unpacking records", unit="img", disable=not progress):
        header, image_bytes = reader.read_unpacked(key)
        label = class_label(header)
        relative_path = f"images/{key:08d}.{image_extension(image_bytes, f'{rec_path} key {key}')}"
        image_path = os.path.join(output_dir, relative_path)
        if os.path.isfile(image_path) and os.path.getsize(image_path) == len(image_bytes):
            skipped += 1
        else:
            write_bytes_atomically(image_path, image_bytes)
            written += 1
        label_lines.append(f"{relative_path}\t{label}\n")
        max_label = max(max_label, label)
    reader.close()
    label_path = os.path.join(output_dir, "label.txt")
    write_bytes_atomically(label_path, "".join(label_lines).encode("utf-8"))
    return {"images": len(label_lines), "written": written, "skipped": skipped,
            "classes": max_label + 1, "label_file": label_path}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Unpack train.rec/train.idx into images/ + label.txt")
    parser.add_argument("--root_dir", required=True, help="folder holding train.rec, train.idx (and property)")
    parser.add_argument("--output_dir", required=True, help="where images/ and label.txt are written")
    args = parser.parse_args(argv)
    return run_command(convert_recordio_to_images, root_dir=args.root_dir, output_dir=args.output_dir)


if __name__ == "__main__":
    raise SystemExit(main())
