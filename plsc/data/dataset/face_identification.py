"""Image folder + label list (`relative/path.jpg<TAB>label` per line), PLSC's training format."""
import os

import numpy as np

from plsc.data.dataset.base import COPY_FOUND, COPY_MISSING, NO_COPY_SOUGHT, FaceImageDataset
from plsc.errors import PlscError
from plsc.registry import DATASETS


def read_label_file(path, delimiter="\t", columns=2):
    """Lines of a label list -> list of (line_number, fields); a malformed line is a PlscError.

    `columns` is the field count, or a tuple of allowed counts (all lines must then agree).
    """
    allowed = (columns,) if isinstance(columns, int) else tuple(columns)
    if not os.path.isfile(path):
        raise PlscError(f"label file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            # PLSC splits on TAB; many hand-made lists use spaces, so fall back to any whitespace.
            fields = line.split(delimiter) if delimiter in line else line.split()
            if len(fields) not in allowed or (rows and len(fields) != len(rows[0][1])):
                expected = len(rows[0][1]) if rows else " or ".join(str(count) for count in allowed)
                raise PlscError(f"{path}:{line_number}: expected {expected} fields, got {line!r}")
            rows.append((line_number, fields))
    if not rows:
        raise PlscError(f"{path}: no samples listed")
    return rows


# The directory of FaceT's training images; its pre-masked copies sit in a sibling `masked` tree.
HOLISTIC_DIR, MASKED_DIR = "imgs", "masked"


def imgs_to_masked(path):
    """`path` with its last directory component `imgs` replaced by `masked`, or None without one."""
    parts = os.path.normpath(path).split(os.sep)
    directories = parts[:-1]
    if HOLISTIC_DIR not in directories:
        return None
    position = len(directories) - 1 - directories[::-1].index(HOLISTIC_DIR)
    parts[position] = MASKED_DIR
    return os.sep.join(parts)


def existing_files(paths):
    """Which of `paths` are files: bool [N]. One directory listing per directory, not one stat per
    file, so checking millions of images costs about as many reads as there are identities."""
    listings = {}
    exists = np.zeros(len(paths), dtype=bool)
    for position, path in enumerate(paths):
        directory, name = os.path.split(path)
        if directory not in listings:
            try:
                listings[directory] = set(os.listdir(directory or "."))
            except OSError:
                listings[directory] = set()
        exists[position] = name in listings[directory]
    return exists


@DATASETS.register("FaceIdentificationDataset")
class FaceIdentificationDataset(FaceImageDataset):
    """Training images listed in `cls_label_path`, paths relative to `image_root`.

    With `masked_ratio` r > 0, a sample is replaced by its masked face with probability r. The masked
    face is `masked_root/<the same relative path>` when `masked_root` is given; else, when the image's
    path has a directory `imgs`, the same path with its last `imgs` replaced by `masked`
    (`data/imgs/0001/1.jpg` -> `data/masked/0001/1.jpg`); it is painted by plsc's mask synthesis
    when neither applies. A copy that was looked for but is absent is painted too, and counted.
    """

    def __init__(self, image_root, cls_label_path, transform_ops=None, delimiter="\t", seed=0,
                 masked_ratio=0.0, masked_root=None):
        super().__init__(transform_ops, seed, masked_ratio)
        if not os.path.isdir(image_root):
            raise PlscError(f"image_root is not a directory: {image_root}")
        self.image_root = image_root
        self.cls_label_path = cls_label_path
        rows = read_label_file(cls_label_path, delimiter)
        self.line_numbers = np.array([number for number, _ in rows], dtype=np.int64)
        self.paths = [fields[0] for _, fields in rows]
        try:
            self.labels = np.array([int(fields[1]) for _, fields in rows], dtype=np.int64)
        except ValueError:
            number, fields = next((n, f) for n, f in rows if not f[1].lstrip("-").isdigit())
            raise PlscError(f"{cls_label_path}:{number}: label {fields[1]!r} is not an integer") from None
        if masked_root is not None and not os.path.isdir(str(masked_root)):
            raise PlscError(f"masked_root is not a directory: {masked_root}")
        self.masked_root = None if masked_root is None else str(masked_root)
        self._find_masked_copies()

    def masked_path(self, index):
        """Where sample `index`'s pre-masked copy is looked for, or None if nowhere."""
        if self.masked_root is not None:
            return os.path.join(self.masked_root, self.paths[index])
        return imgs_to_masked(os.path.join(self.image_root, self.paths[index]))

    def _find_masked_copies(self):
        """Decide once, here in the main process, which samples have a pre-masked copy (copy_status)."""
        if self.masked_ratio == 0.0:
            self.setup_masking(np.zeros(len(self.paths), dtype=np.int8), "")
            return
        candidates = [self.masked_path(index) for index in range(len(self.paths))]
        sought = np.array([candidate is not None for candidate in candidates], dtype=bool)
        found = np.zeros(len(candidates), dtype=bool)
        found[sought] = existing_files([candidate for candidate in candidates if candidate is not None])
        status = np.where(found, COPY_FOUND, np.where(sought, COPY_MISSING, NO_COPY_SOUGHT))
        looked_for = (f"looked for <masked_root>/<path>, masked_root {self.masked_root}" if self.masked_root
                      else f"looked for the image path with '{HOLISTIC_DIR}' replaced by '{MASKED_DIR}'")
        self.setup_masking(status, looked_for)

    def describe(self, index):
        return (f"{os.path.join(self.image_root, self.paths[index])} "
                f"({self.cls_label_path}:{self.line_numbers[index]})")

    def describe_masked(self, index):
        return f"{self.masked_path(index)} (pre-masked copy of {self.cls_label_path}:{self.line_numbers[index]})"

    def read_bytes(self, index):
        return read_file(os.path.join(self.image_root, self.paths[index]))

    def read_masked_bytes(self, index):
        return read_file(self.masked_path(index))


def read_file(path):
    """The bytes of an image file; an unreadable file is a PlscError (the caller adds which sample)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise PlscError(f"cannot read image: {error.strerror}") from None
