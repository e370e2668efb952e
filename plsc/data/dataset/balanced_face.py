"""BUPT-Balancedface / BUPT-Globalface training data, as released: `data/index.txt` + `data/img/`.

Each line of `data/index.txt` is `<comment> <attribute> <label> <exists>`: a free-form name (the
original `race/person/image` path), the race index (0 African, 1 Asian, 2 Caucasian, 3 Indian),
the identity label and a 0/1 flag of the release. Line k (0-based) is the image `data/img/%07d.jpg`.
`root` is the release zip, read whole into memory (as the MixFairFace authors do; every loader
worker then reads from its copy without file handles), or a folder holding `data/`.

The race is kept per sample (`groups`, an index into `group_names`; index.txt calls it the
attribute): the loader's samples carry it, so the trainer logs the training loss per race, and the
sample and identity counts per race are logged when the dataset is built.
"""
import io
import logging
import os
import zipfile

import numpy as np

from plsc.data.dataset.base import FaceImageDataset
from plsc.data.dataset.face_identification import existing_files, read_file
from plsc.errors import PlscError
from plsc.registry import DATASETS

INDEX_PATH = "data/index.txt"
IMAGE_PATTERN = "data/img/{:07d}.jpg"
RACES = ("African", "Asian", "Caucasian", "Indian")


def parse_index(text, where):
    """index.txt text -> (names [N], attributes int64 [N], labels int64 [N]); a bad line is a PlscError."""
    names, attributes, labels = [], [], []
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            raise PlscError(f"{where}:{line_number}: empty line (line k is image k, so none may be skipped)")
        if len(fields) != 4:
            raise PlscError(f"{where}:{line_number}: expected '<comment> <attribute> <label> <exists>', got "
                            f"{line.strip()!r}")
        try:
            attribute, label, _ = (int(field) for field in fields[1:])
        except ValueError:
            raise PlscError(f"{where}:{line_number}: attribute, label and exists must be integers, got "
                            f"{' '.join(fields[1:])!r}") from None
        if attribute < 0 or label < 0:
            raise PlscError(f"{where}:{line_number}: negative attribute or label in {line.strip()!r}")
        names.append(fields[0])
        attributes.append(attribute)
        labels.append(label)
    if not names:
        raise PlscError(f"{where}: no samples listed")
    return names, np.array(attributes, dtype=np.int64), np.array(labels, dtype=np.int64)


class ZipSource:
    """The release zip held in memory."""

    def __init__(self, path):
        try:
            with open(path, "rb") as handle:
                self.archive = zipfile.ZipFile(io.BytesIO(handle.read()))
        except (OSError, zipfile.BadZipFile) as error:
            raise PlscError(f"{path}: cannot open as a zip file ({error})") from None
        self.path = path
        self.members = set(self.archive.namelist())

    def where(self, member):
        return f"{self.path}:{member}"

    def read(self, member):
        if member not in self.members:
            raise PlscError(f"{self.where(member)}: not in the zip")
        return self.archive.read(member)

    def missing(self, members):
        return [member for member in members if member not in self.members]


class FolderSource:
    """The release unpacked: `root/data/...`."""

    def __init__(self, root):
        self.root = root

    def where(self, member):
        return os.path.join(self.root, member)

    def read(self, member):
        if not os.path.isfile(self.where(member)):
            raise PlscError(f"{self.where(member)}: file not found")
        return read_file(self.where(member))

    def missing(self, members):
        exists = existing_files([self.where(member) for member in members])
        return [member for member, present in zip(members, exists) if not present]


@DATASETS.register("BalancedFaceDataset")
class BalancedFaceDataset(FaceImageDataset):
    """BUPT-Balancedface / Globalface from its zip (read into memory) or unpacked folder; races kept."""

    def __init__(self, root, transform_ops=None, seed=0, races=RACES, selected_races=None, masked_ratio=0.0):
        super().__init__(transform_ops, seed, masked_ratio)
        if os.path.isdir(root):
            self.source = FolderSource(root)
        elif os.path.isfile(root):
            self.source = ZipSource(root)
        else:
            raise PlscError(f"BalancedFaceDataset.root: {root} is neither the release zip nor a folder")
        self.group_names = tuple(races)
        names, attributes, labels = parse_index(self.source.read(INDEX_PATH).decode("utf-8"),
                                                self.source.where(INDEX_PATH))
        if attributes.max() >= len(self.group_names):
            line = int(np.argmax(attributes >= len(self.group_names))) + 1
            raise PlscError(f"{self.source.where(INDEX_PATH)}:{line}: attribute {attributes[line - 1]} has no name "
                            f"in races {list(self.group_names)}")
        self.line_indices = np.arange(len(names), dtype=np.int64)  # line k is image k
        if selected_races is not None:
            unknown = [race for race in selected_races if race not in self.group_names]
            if unknown:
                raise PlscError(f"BalancedFaceDataset.selected_races: '{unknown[0]}' is not one of "
                                f"{list(self.group_names)}")
            chosen = np.isin(attributes, [self.group_names.index(race) for race in selected_races])
            self.line_indices = self.line_indices[chosen]
        self.names = [names[index] for index in self.line_indices]
        self.groups = attributes[self.line_indices]
        self.labels = labels[self.line_indices]
        members = [IMAGE_PATTERN.format(int(index)) for index in self.line_indices]
        missing = self.source.missing(members)
        if missing:
            raise PlscError(f"{self.describe(members.index(missing[0]))}: image missing ({len(missing)} listed "
                            "images are)")
        self.setup_masking(np.zeros(len(self.labels), dtype=np.int8), "")
        logging.getLogger("plsc").info("BalancedFaceDataset " + self.describe_groups())

    def group_counts(self):
        """{race: (samples, identities)} in race order (races without samples left out)."""
        counts = {}
        for position, race in enumerate(self.group_names):
            members = self.groups == position
            if members.any():
                counts[race] = (int(members.sum()), int(np.unique(self.labels[members]).size))
        return counts

    def describe_groups(self):
        return ", ".join(f"{race}: {samples} images of {identities} identities"
                         for race, (samples, identities) in self.group_counts().items())

    def describe(self, index):
        line = int(self.line_indices[index])
        return (f"{self.source.where(IMAGE_PATTERN.format(line))} ({INDEX_PATH} line {line + 1}, "
                f"{self.names[index]})")

    def read_bytes(self, index):
        return self.source.read(IMAGE_PATTERN.format(int(self.line_indices[index])))
