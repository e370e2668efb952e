"""Build an LFW-style verification `.bin` from a pair list and an image folder.

    python -m plsc.data.dataset.tools.make_verification_bin --pairs pairs.txt --image_root D --out lfw.bin

Two pair-list formats are read (`--format auto` tells them apart by the first line):
- LFW's `pairs.txt`: a header line of integers (`10 300`: 10 folds of 300 same-person and 300
  different-person pairs; or `1100`: that many of each kind), then same-person lines `name n1 n2` and different-person lines `name1 n1 name2 n2`; image n of
  `name` is `name/name_%04d.<ext>` under image_root (`--image_ext`, default jpg).
- a plain list: `path1 path2 issame` lines (paths relative to image_root; issame 1/0 or true/false).
Fields are separated by tabs or spaces. The `.bin` is a pickle of (list of 2P encoded images,
list of P bools), pair k being images 2k and 2k+1: the layout of lfw.bin, cfp_fp.bin, agedb_30.bin.
Aligned 112x112 JPEG/PNG images are stored byte for byte, other sizes resized with a warning.
"""
import argparse
import os
import sys

from plsc.data.dataset.face_verification import ISSAME_VALUES
from plsc.data.dataset.tools import run_command
from plsc.data.dataset.tools.images_2_mx_recordio import IMAGE_SIZE, prepare_image
from plsc.data.progress import Progress
from plsc.data.verification_bin import write_bin
from plsc.errors import PlscError

FORMATS = ("auto", "lfw", "list")


def _lines(path):
    """Non-blank lines of a text file: [(line number, fields)]."""
    if not os.path.isfile(path):
        raise PlscError(f"pair list not found: {path}")
    with open(path, encoding="utf-8") as handle:
        return [(number, line.split()) for number, line in enumerate(handle, start=1) if line.strip()]


def _is_lfw_header(fields):
    return 1 <= len(fields) <= 2 and all(field.isdigit() for field in fields)


def _image_number(text, path, number):
    if not text.isdigit():
        raise PlscError(f"{path}:{number}: image number {text!r} is not a positive integer")
    return int(text)


def parse_lfw_pairs(path, image_ext="jpg"):
    """LFW pairs.txt -> [(relative path 1, relative path 2, issame, line number)]."""
    lines = _lines(path)
    if not lines or not _is_lfw_header(lines[0][1]):
        raise PlscError(f"{path}:1: expected LFW's header line ('10 300' or a pair count)")
    pairs = []
    for number, fields in lines[1:]:
        if len(fields) == 3:
            name, first, second = fields
            names, numbers, issame = (name, name), (first, second), True
        elif len(fields) == 4:
            names, numbers, issame = (fields[0], fields[2]), (fields[1], fields[3]), False
        else:
            raise PlscError(f"{path}:{number}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {' '.join(fields)!r}")
        relative = [f"{name}/{name}_{_image_number(text, path, number):04d}.{image_ext}"
                    for name, text in zip(names, numbers)]
        pairs.append((relative[0], relative[1], issame, number))
    header = [int(field) for field in lines[0][1]]
    # `10 300` is 10 folds of 300 same-person and 300 different-person pairs; a lone count (the
    # development files) is the number of pairs of each kind.
    expected = 2 * header[0] * (header[1] if len(header) == 2 else 1)
    if expected != len(pairs):
        raise PlscError(f"{path}:1: the header announces {expected} pairs but the file lists {len(pairs)}")
    return pairs


def parse_pair_list(path):
    """`path1 path2 issame` lines -> [(relative path 1, relative path 2, issame, line number)]."""
    pairs = []
    for number, fields in _lines(path):
        if len(fields) != 3:
            raise PlscError(f"{path}:{number}: expected 'path1 path2 issame', got {' '.join(fields)!r}")
        issame = ISSAME_VALUES.get(fields[2].lower())
        if issame is None:
            raise PlscError(f"{path}:{number}: issame {fields[2]!r} is not 1, true, 0 or false")
        pairs.append((fields[0], fields[1], issame, number))
    return pairs


def read_pairs(path, pair_format="auto", image_ext="jpg"):
    """Pairs of either format: [(relative path 1, relative path 2, issame, line number)]."""
    if pair_format not in FORMATS:
        raise PlscError(f"--format {pair_format!r} is not one of {', '.join(FORMATS)}")
    if pair_format == "auto":
        lines = _lines(path)
        pair_format = "lfw" if lines and _is_lfw_header(lines[0][1]) else "list"
    pairs = parse_lfw_pairs(path, image_ext) if pair_format == "lfw" else parse_pair_list(path)
    if len(pairs) < 2:
        raise PlscError(f"{path}: {len(pairs)} pair(s); k-fold verification needs at least 2")
    return pairs


def _log_to_stderr(message):
    print(message, file=sys.stderr, flush=True)


def make_verification_bin(pairs_path, image_root, out_path, pair_format="auto", image_ext="jpg", quality=None,
                          log=_log_to_stderr, progress=None):
    """Read the pairs and their images, write the `.bin` atomically; returns a summary."""
    if not os.path.isdir(image_root):
        raise PlscError(f"image_root is not a directory: {image_root}")
    if quality is not None and not 1 <= int(quality) <= 100:
        raise PlscError(f"--quality {quality}: JPEG quality must be within 1 .. 100")
    pairs = read_pairs(pairs_path, pair_format, image_ext)
    images, issame, resized = [], [], []
    bar = Progress(2 * len(pairs), "reading pair images", log, progress)
    try:
        for first, second, same, number in pairs:
            for relative in (first, second):
                source = f"{pairs_path}:{number}"
                image_bytes, resized_from, _ = prepare_image(os.path.join(image_root, relative), source, quality)
                images.append(image_bytes)
                if resized_from is not None:
                    resized.append((source, relative, resized_from))
                bar.update()
            issame.append(same)
    finally:
        bar.close()
    if resized:
        source, relative, (height, width) = resized[0]
        log(f"warning: {len(resized)} images were not {IMAGE_SIZE}x{IMAGE_SIZE} and were resized "
            f"(first: {relative}, {width}x{height}, {source}); verification expects aligned crops")
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    write_bin(out_path, images, issame)
    return {"pairs": len(pairs), "same": sum(issame), "different": len(pairs) - sum(issame),
            "resized": len(resized), "bin": out_path}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pair list + images -> LFW-style verification .bin")
    parser.add_argument("--pairs", required=True, help="LFW pairs.txt, or a 'path1 path2 issame' list")
    parser.add_argument("--image_root", required=True, help="folder the image paths are relative to")
    parser.add_argument("--out", required=True, help="the .bin to write")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="pair list format (default: auto)")
    parser.add_argument("--image_ext", default="jpg", help="extension of LFW-named images (default jpg)")
    parser.add_argument("--quality", type=int, default=None,
                        help="re-encode every image as JPEG of this quality (default: keep 112x112 JPEG/PNG)")
    args = parser.parse_args(argv)
    return run_command(make_verification_bin, pairs_path=args.pairs, image_root=args.image_root, out_path=args.out,
                       pair_format=args.format, image_ext=args.image_ext.lstrip("."), quality=args.quality)


if __name__ == "__main__":
    raise SystemExit(main())
