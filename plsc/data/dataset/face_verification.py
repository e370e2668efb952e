"""Verification pairs: a converted folder (`img1<TAB>img2<TAB>issame`) or an LFW-style `.bin`."""
import os

import numpy as np

from plsc.data.dataset.base import FaceImageDataset
from plsc.data.dataset.face_identification import read_label_file
from plsc.errors import PlscError
from plsc.registry import DATASETS


# What `masked` says about the faces of a set, and the name its results are reported under.
MASKED_KINDS = {False: "holistic", True: "masked", "per_image": "per_image", "painted": "per_image"}


@DATASETS.register("FaceVerificationDataset")
class FaceVerificationDataset(FaceImageDataset):
    """2*P images in pair order (2k, 2k+1); `issame` [P] bool. Item = (image, issame of its pair, is_masked).

    `masked` says which faces wear a mask, so a backbone with a masked-face path gets the right flag:
      False (or null): none, every is_masked is 0 (kind "holistic");
      True: every image is flagged 1 (kind "masked"), as masked benchmarks are usually scored;
      "per_image": each image's own flag (kind "per_image"), from a folder list with five columns
        `img1<TAB>img2<TAB>issame<TAB>masked1<TAB>masked2` (0/1), or else from a sidecar beside the set,
        `<list or .bin without extension>.masked.npy`: an integer array [2P] of 0/1 in image order
        (`OneSideMaskedPairs.masked_flags()` gives it for plsc's one-side-masked pairs);
      "painted": plsc paints a synthetic mask on one image of every pair as it reads the set
        (deterministic per pair, plsc.data.mask.OneSideMaskedPairs) and flags it: a masked
        counterpart of any holistic set, kind "per_image".
    `image_masked` holds the flags: int64 [2P].
    """

    def __init__(self, image_root=None, cls_label_path=None, transform_ops=None, delimiter="\t",
                 bin_path=None, set_name=None, seed=0, masked=None):
        super().__init__(transform_ops, seed)
        masked = False if masked is None else masked
        if not (isinstance(masked, bool) or masked in ("per_image", "painted")):
            raise PlscError(f"{bin_path or cls_label_path}: masked must be False, True, 'per_image' or 'painted', "
                            f"got {masked!r}")
        self.masked_kind = MASKED_KINDS[masked]
        flag_columns = None
        if bin_path is not None:
            from plsc.data.verification_bin import load_bin

            self.source = bin_path
            self.encoded, self.issame = load_bin(bin_path)
            check_pair_count(bin_path, len(self.issame))
            self.paths = None
        else:
            if image_root is None or cls_label_path is None:
                raise PlscError("FaceVerificationDataset needs bin_path, or image_root and cls_label_path")
            self.source = cls_label_path
            rows = read_label_file(cls_label_path, delimiter, columns=(3, 5))
            self.image_root = image_root
            self.paths = [path for _, fields in rows for path in fields[:2]]
            self.line_numbers = [number for number, _ in rows for _ in range(2)]
            self.issame = parse_issame(cls_label_path, rows)
            if len(rows[0][1]) == 5:
                flag_columns = [(number, fields[3:]) for number, fields in rows]
        # Results are reported under this name: `set_name`, else the folder or .bin file name.
        self.name = set_name or os.path.basename(os.path.normpath(os.path.dirname(self.source) if bin_path is None
                                                               else os.path.splitext(bin_path)[0]))
        self.labels = np.repeat(self.issame.astype(np.int64), 2)
        self.painter = None
        if masked == "painted":
            from plsc.data.mask import OneSideMaskedPairs

            self.painter = OneSideMaskedPairs(self, seed)
            self.image_masked = self.painter.masked_flags()
        elif self.masked_kind == "per_image":
            self.image_masked = (flags_from_columns(cls_label_path, flag_columns) if flag_columns is not None
                                 else flags_from_sidecar(self.source, len(self.labels)))
        else:
            self.image_masked = np.full(len(self.labels), int(self.masked_kind == "masked"), dtype=np.int64)

    def read_sample(self, index):
        if self.painter is not None:
            return self.painter[index]
        image, label, _ = super().read_sample(index)
        return image, label, self.image_masked[index]

    def describe(self, index):
        if self.paths is None:
            return f"{self.source} (image {index}, pair {index // 2})"
        return f"{os.path.join(self.image_root, self.paths[index])} ({self.source}:{self.line_numbers[index]})"

    def read_bytes(self, index):
        if self.paths is None:
            data = self.encoded[index]
            return data.tobytes() if isinstance(data, np.ndarray) else data
        try:
            with open(os.path.join(self.image_root, self.paths[index]), "rb") as handle:
                return handle.read()
        except OSError as error:
            raise PlscError(f"cannot read image: {error.strerror}") from None


# The pair lists of PLSC's converter write 1/0; hand-made lists often write true/false. Anything
# else ("yes", "2") is refused: reading it as "different" would silently corrupt the accuracy.
ISSAME_VALUES = {"1": True, "true": True, "0": False, "false": False}


def parse_issame(path, rows):
    """The 3rd column of a pair list [(line number, fields)] -> bool [P]; only 1/true/0/false (any case)."""
    issame = []
    for number, fields in rows:
        value = ISSAME_VALUES.get(fields[2].strip().lower())
        if value is None:
            raise PlscError(f"{path}:{number}: issame {fields[2].strip()!r} is not 1, true, 0 or false")
        issame.append(value)
    check_pair_count(path, len(issame))
    return np.array(issame, dtype=bool)


def check_pair_count(path, num_pairs):
    """One pair cannot be split into a threshold fold and a test fold; zero pairs score nothing."""
    if num_pairs < 2:
        raise PlscError(f"{path}: {num_pairs} pair(s); k-fold verification needs at least 2")


def flags_from_columns(path, rows):
    """The 4th and 5th columns of a pair list [(line number, [masked1, masked2])] -> int64 [2P] of 0/1."""
    flags = []
    for number, fields in rows:
        for field in fields:
            if field.strip() not in ("0", "1"):
                raise PlscError(f"{path}:{number}: masked flag {field!r} is not 0 or 1")
            flags.append(int(field))
    return np.array(flags, dtype=np.int64)


def flags_from_sidecar(source, num_images):
    """Per-image masked flags [2P] int64 from `<source without extension>.masked.npy`."""
    path = os.path.splitext(source)[0] + ".masked.npy"
    if not os.path.isfile(path):
        raise PlscError(f"{source}: masked: per_image needs the flag of each image, as a five-column pair list "
                        f"(img1 img2 issame masked1 masked2) or the sidecar {path}; neither was found")
    try:
        flags = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise PlscError(f"{path}: not a numpy .npy array ({error})") from None
    if flags.shape != (num_images,) or not np.isin(flags, (0, 1)).all():
        raise PlscError(f"{path}: expected {num_images} flags of 0/1 (one per image, pair order), got "
                        f"{flags.dtype} {list(flags.shape)}")
    return flags.astype(np.int64)
