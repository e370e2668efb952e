"""Face boxes from 5 landmarks, written as FFEM's `image_list.json`.

    python -m plsc.data.dataset.tools.ffem_landmarks_to_box --landmarks L.txt --output image_list.json

Each line of the landmark file is `relative/path.jpg label x1 y1 x2 y2 ... x5 y5` (left eye, right eye,
nose, left mouth corner, right mouth corner, in pixels). The box: w = (max_x - min_x) / 1.5 and
h = (max_y - min_y) / 1.5 of the landmarks' extent, extended by w (h) on each side, clipped to
x, y >= 0, then shifted sideways by w * s for a turned head, with s = (d_left - d_right) /
(d_left + d_right) from the horizontal eye-to-nose distances (0 for a frontal face; positive
when the nose is nearer the right eye, i.e. the face looks to the image's right, where more of it lies).
"""
import argparse
import json
import sys

import numpy as np

from plsc.data.dataset.tools import run_command, write_bytes_atomically
from plsc.errors import PlscError

EXTENT_DIVISOR = 1.5


def landmarks_to_box(points):
    """points float [5, 2] (eyes, nose, mouth corners) -> (x1, y1, x2, y2) floats."""
    points = np.asarray(points, dtype=np.float64)
    min_x, min_y = points.min(axis=0)
    max_x, max_y = points.max(axis=0)
    width, height = (max_x - min_x) / EXTENT_DIVISOR, (max_y - min_y) / EXTENT_DIVISOR
    left_gap, right_gap = abs(points[2, 0] - points[0, 0]), abs(points[1, 0] - points[2, 0])
    yaw = (left_gap - right_gap) / (left_gap + right_gap) if left_gap + right_gap > 0 else 0.0
    shift = width * yaw
    x1, x2 = min_x - width + shift, max_x + width + shift
    return (float(max(x1, 0.0)), float(max(min_y - height, 0.0)), float(x2), float(max_y + height))


def read_landmark_file(path):
    """{path: {label, x1, y1, x2, y2}} from a landmark list; a malformed line is a PlscError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise PlscError(f"cannot read landmark file {path}: {error.strerror}") from None
    entries = {}
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 12:
            raise PlscError(f"{path}:{line_number}: expected 'path label' and 10 coordinates, got {len(fields)} fields")
        try:
            label, coordinates = int(fields[1]), [float(value) for value in fields[2:]]
        except ValueError:
            raise PlscError(f"{path}:{line_number}: label must be an integer and coordinates numbers") from None
        x1, y1, x2, y2 = landmarks_to_box(np.reshape(coordinates, (5, 2)))
        entries[fields[0]] = {"label": label, "x1": x1, "y1": y1, "x2": x2, "y2": y2}
    if not entries:
        raise PlscError(f"{path}: no landmarks listed")
    return entries


def convert(landmarks, output):
    entries = read_landmark_file(landmarks)
    write_bytes_atomically(output, json.dumps(entries, indent=1).encode("utf-8"))
    return {"images": len(entries), "output": output}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--landmarks", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    return run_command(convert, landmarks=args.landmarks, output=args.output)


if __name__ == "__main__":
    sys.exit(main())
