"""Unpack an LFW-style verification `.bin` into PNG pairs + `label.txt` (FaceVerificationDataset format).

    python -m plsc.data.dataset.tools.lfw_style_bin_dataset_converter --bin_path lfw.bin --out_dir DIR [--flip_test]

Pair k becomes `images/%08d_0.png` and `images/%08d_1.png`, listed as
`images/00000000_0.png<TAB>images/00000000_1.png<TAB>1` (issame as 1/0). With `--flip_test` the
horizontally flipped pairs `%08d_0_hflip.png` / `%08d_1_hflip.png` follow all the original lines,
as PLSC's tool writes them.
"""
import argparse
import os

import cv2
import numpy as np
from tqdm import tqdm

from plsc.data.dataset.tools import run_command, write_bytes_atomically
from plsc.data.verification_bin import load_bin
from plsc.errors import PlscError


def decode_image(image_bytes, where):
    """Encoded image bytes -> BGR uint8 [H, W, 3]."""
    image = cv2.imdecode(np.frombuffer(image_bytes, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise PlscError(f"{where}: cannot decode the image ({len(image_bytes)} bytes)")
    return image


def encode_png(image_bgr):
    """BGR uint8 [H, W, 3] -> PNG bytes."""
    ok, encoded = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError("OpenCV failed to encode a PNG")
    return encoded.tobytes()


def pair_image_name(pair_index, side, variant=""):
    """Relative path of image `side` (0/1) of pair `pair_index`; `variant` is "" or "_hflip"."""
    return f"images/{pair_index:08d}_{side}{variant}.png"


def convert_bin_to_images(bin_path, out_dir, flip_test=False, progress=True):
    """`bin_path` -> `out_dir/images/*.png` + `out_dir/label.txt`; returns counts."""
    images, issame = load_bin(bin_path)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    variants = ("", "_hflip") if flip_test else ("",)
    lines = {variant: [] for variant in variants}
    for pair_index in tqdm(range(len(issame)), desc="unpacking pairs", unit="pair", disable=not progress):
        for variant in variants:
            first, second = (pair_image_name(pair_index, side, variant) for side in (0, 1))
            lines[variant].append(f"{first}\t{second}\t{int(issame[pair_index])}\n")
        for side in (0, 1):
            image_index = 2 * pair_index + side
            image = decode_image(images[image_index], f"{bin_path} image {image_index} (pair {pair_index})")
            for variant in variants:
                pixels = cv2.flip(image, 1) if variant == "_hflip" else image
                write_bytes_atomically(os.path.join(out_dir, pair_image_name(pair_index, side, variant)),
                                       encode_png(pixels))
    label_path = os.path.join(out_dir, "label.txt")
    write_bytes_atomically(label_path, "".join(line for variant in variants for line in lines[variant]).encode())
    return {"pairs": len(issame), "images": len(variants) * len(images), "label_file": label_path}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Unpack an LFW-style .bin into PNG pairs + label.txt")
    parser.add_argument("--bin_path", required=True, help="lfw.bin, cfp_fp.bin, agedb_30.bin, ...")
    parser.add_argument("--out_dir", required=True, help="where images/ and label.txt are written")
    parser.add_argument("--flip_test", action="store_true", help="also write horizontally flipped pairs")
    args = parser.parse_args(argv)
    return run_command(convert_bin_to_images, bin_path=args.bin_path, out_dir=args.out_dir,
                       flip_test=args.flip_test)


if __name__ == "__main__":
    raise SystemExit(main())
