"""Image sets of the federated layout and their embeddings under a backbone."""
import os

import numpy as np
import paddle
import paddle.nn.functional as F

from plsc.data.dataset.face_identification import FaceIdentificationDataset
from plsc.errors import PlscError

# Random augmentations are dropped when a training pipeline is reused to embed images.
RANDOM_TRANSFORMS = ("RandFlipImage",)


def train_transform_ops(config):
    return list(config.DataLoader.Train.dataset.get("transform_ops") or [])


def embed_transform_ops(config):
    """The first verification set's transforms, else the training ones without random augmentation."""
    eval_section = (config.get("DataLoader") or {}).get("Eval")
    if eval_section:
        dataset = eval_section.dataset[0] if isinstance(eval_section.dataset, list) else eval_section.dataset
        if dataset.get("transform_ops"):
            return list(dataset.transform_ops)
    return [op for op in train_transform_ops(config) if next(iter(op)) not in RANDOM_TRANSFORMS]


def image_set(directory, transform_ops, seed=0):
    """FaceIdentificationDataset of `directory/label.txt`; a PlscError if the folder is not there."""
    label_file = os.path.join(directory, "label.txt")
    if not os.path.isfile(label_file):
        raise PlscError(f"{label_file} not found (run python -m plsc.federated.split first)")
    return FaceIdentificationDataset(directory, label_file, transform_ops=transform_ops, seed=seed)


def load_batch(dataset, indices):
    """(images float32 [B, 3, H, W], labels int64 [B]) of dataset samples `indices`, read in this process."""
    # read_sample's first two fields are the image and its label (further fields are per-sample extras).
    samples = [dataset.read_sample(int(index)) for index in indices]
    return (np.stack([sample[0] for sample in samples]),
            np.array([sample[1] for sample in samples], dtype=np.int64))


def embed_images(backbone, dataset, batch_size, transform=None):
    """L2-normalised embeddings [N, D] float32 of every image of `dataset` in order (eval mode).

    `transform` (a Layer applied to the backbone output, e.g. the transformation layer) is optional.
    """
    was_training = backbone.training
    backbone.eval()
    chunks = []
    with paddle.no_grad():
        for start in range(0, len(dataset), batch_size):
            images, _ = load_batch(dataset, range(start, min(start + batch_size, len(dataset))))
            features = backbone(paddle.to_tensor(images))
            if transform is not None:
                features = transform(features)
            chunks.append(F.normalize(features.astype("float32"), axis=1).numpy())
    if was_training:
        backbone.train()
    return np.concatenate(chunks, axis=0) if chunks else np.zeros((0, 0), dtype=np.float32)
