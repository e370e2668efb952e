"""FFEM's `image_list.json` -> a `.rec/.idx` pair of face crops (exact box, resized), without MXNet.

    python -m plsc.data.dataset.tools.ffem_json_to_rec --image_root D --image_list image_list.json \
        --output_dir O [--image_size 112] [--quality 95]

Each image is cropped to its box and resized to image_size x image_size (the evaluation crop: the
training-time box jitter needs the full images, i.e. BoxedImageListDataset). Records are keys 1..N in
list order, each with its label renumbered by first appearance (as the dataset does); `property`
holds `num_classes,size,size`. Files appear under their names only when complete.
"""
import argparse
import os
import sys

import cv2
import numpy as np

from plsc.data.dataset.boxed_list import BoxedImageListDataset
from plsc.data.dataset.tools import run_command, write_bytes_atomically
from plsc.data.recordio import RecordWriter, pack_record
from plsc.errors import PlscError

DECODE_ONLY = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}]


def convert(image_root, image_list, output_dir, image_size=112, quality=95):
    dataset = BoxedImageListDataset(image_root, image_list, transform_ops=DECODE_ONLY, image_size=image_size)
    os.makedirs(output_dir, exist_ok=True)
    with RecordWriter(os.path.join(output_dir, "train.rec"), os.path.join(output_dir, "train.idx")) as writer:
        for index in range(len(dataset)):
            crop, label, _ = dataset.read_sample(index)
            ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            if not ok:
                raise PlscError(f"{dataset.describe(index)}: cannot encode the crop as JPEG")
            writer.write(index + 1, pack_record((0, float(label), index + 1, 0), encoded.tobytes()))
    num_classes = int(np.max(dataset.labels)) + 1
    write_bytes_atomically(os.path.join(output_dir, "property"),
                           f"{num_classes},{image_size},{image_size}".encode("ascii"))
    return {"images": len(dataset), "classes": num_classes, "output": output_dir}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image_root", required=True)
    parser.add_argument("--image_list", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=112)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args(argv)
    return run_command(convert, image_root=args.image_root, image_list=args.image_list, output_dir=args.output_dir,
                       image_size=args.image_size, quality=args.quality)


if __name__ == "__main__":
    sys.exit(main())
