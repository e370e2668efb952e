"""Cleaning a dataset with a trained Sub-center ArcFace class layer (Deng et al., ECCV 2020, section 3.3).

After training with K sub-centres, each class's clean faces sit around one *dominant* sub-centre
(the one most of its images are closest to); the paper then drops the non-dominant sub-centres
and the images far from the dominant one: an image is noisy when its angle to its class's
dominant sub-centre exceeds a threshold (75 degrees in the paper's MS1MV0 experiments).
The maths and the report are plain numpy (they run once, offline); tools/subcenter_clean.py is the
command, which embeds the training set with the engine's backbone and calls these.
"""
import os
from dataclasses import dataclass

import numpy as np

from plsc.errors import PlscError

DEFAULT_THRESHOLD_DEGREES = 75.0


def split_subcenters(table, num_subcenters):
    """Class rows with the K sub-centres side by side [C, K*D] -> [C, K, D]."""
    classes, width = table.shape
    if width % num_subcenters:
        raise PlscError(f"class rows of width {width} do not hold {num_subcenters} sub-centres of equal size")
    return table.reshape(classes, num_subcenters, width // num_subcenters)


def _unit(vectors):
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def class_subcenter_cosines(subcenters, embeddings, labels):
    """Cosine of each image with each sub-centre of its own class: [C, K, D], [N, D], [N] -> [N, K]."""
    return np.einsum("nkd,nd->nk", _unit(subcenters)[labels], _unit(embeddings))


def dominant_subcenters(nearest, labels, num_classes, num_subcenters):
    """Per class, the sub-centre most of its images are closest to (ties: the lowest index): [C] int64.

    nearest: [N] index of each image's closest sub-centre of its class; labels: [N].
    A class without images keeps sub-centre 0.
    """
    counts = np.zeros((num_classes, num_subcenters), dtype=np.int64)
    np.add.at(counts, (labels, nearest), 1)
    return counts.argmax(axis=1)


@dataclass
class CleaningResult:
    """What cleaning found: per class the kept sub-centre, per image its angle and the verdict."""

    dominant: np.ndarray  # [C] int64 index of each class's dominant sub-centre
    dominant_centers: np.ndarray  # [C, D] float32, the class layer with the others dropped
    nearest: np.ndarray  # [N] int64 index of each image's closest sub-centre of its class
    angle_to_dominant: np.ndarray  # [N] float64 degrees
    noisy: np.ndarray  # [N] bool, angle_to_dominant > threshold


def clean_with_subcenters(subcenters, embeddings, labels, threshold_degrees=DEFAULT_THRESHOLD_DEGREES):
    """Dominant sub-centre of every class and the images too far from it.

    subcenters: [C, K, D]; embeddings: [N, D] (not necessarily normalised); labels: [N] in [0, C).
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes, num_subcenters, _ = subcenters.shape
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise PlscError(f"labels must lie in [0, {num_classes}) (the class layer's size)")
    cosines = class_subcenter_cosines(subcenters, embeddings, labels)
    nearest = cosines.argmax(axis=1)
    dominant = dominant_subcenters(nearest, labels, num_classes, num_subcenters)
    cos_to_dominant = np.clip(cosines[np.arange(labels.size), dominant[labels]], -1.0, 1.0)
    angle = np.degrees(np.arccos(cos_to_dominant))
    return CleaningResult(dominant=dominant,
                          dominant_centers=subcenters[np.arange(num_classes), dominant].astype(np.float32),
                          nearest=nearest, angle_to_dominant=angle, noisy=angle > threshold_degrees)


def write_cleaning_report(result, dataset, out_dir, threshold_degrees):
    """noisy.txt (one line per noisy image), clean_label.txt (kept images, PLSC's label format, when the
    dataset is an image list) and dominant_centers.npy [C, D]; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    written = {"dominant_centers": os.path.join(out_dir, "dominant_centers.npy"),
               "noisy": os.path.join(out_dir, "noisy.txt")}
    np.save(written["dominant_centers"], result.dominant_centers)
    with open(written["noisy"], "w", encoding="utf-8") as handle:
        handle.write(f"# index\tlabel\tangle_to_dominant_deg\tnearest_subcenter\tdominant_subcenter\tsource"
                     f"  (threshold {threshold_degrees} deg)\n")
        for index in np.flatnonzero(result.noisy):
            label = int(dataset.labels[index])
            handle.write(f"{index}\t{label}\t{result.angle_to_dominant[index]:.2f}\t{result.nearest[index]}\t"
                         f"{result.dominant[label]}\t{dataset.describe(index)}\n")
    if hasattr(dataset, "paths"):
        written["clean_label"] = os.path.join(out_dir, "clean_label.txt")
        with open(written["clean_label"], "w", encoding="utf-8") as handle:
            for index in np.flatnonzero(~result.noisy):
                handle.write(f"{dataset.paths[index]}\t{int(dataset.labels[index])}\n")
    return written
