"""The global backbone on an IJB-B / IJB-C release: 1:1 TAR at FAR and, when its files exist, 1:N TPIR.

The standard protocol (as task/recognition/face/onnx_ijbc.py with its defaults): every loose crop
aligned by its 5 landmarks at the model's input size, embedding of image + mirror summed, templates
pooled with the detector score as weight and the feature norm kept, pair score = cosine.
"""
from pathlib import Path

import numpy as np
import paddle

from plsc.data.align import read_aligned
from plsc.errors import PlscError
from plsc.metrics import ijb
from plsc.federated.personal_eval import rate_name
from plsc.metrics.roc import DEFAULT_FARS, tar_at_far

FPIRS = (1e-3, 1e-2, 1e-1)


def ijb_image_features(backbone, image_dir, protocol, size, batch_size):
    """[N, D] float32: embedding of each aligned image plus that of its mirror image."""
    backbone.eval()
    chunks = []
    with paddle.no_grad():
        for start in range(0, len(protocol.image_names), batch_size):
            names = protocol.image_names[start:start + batch_size]
            faces = np.stack([read_aligned(Path(image_dir) / name, points, size)
                              for name, points in zip(names, protocol.landmarks[start:start + batch_size])])
            images = (faces.astype(np.float32) / 255.0 - 0.5) / 0.5
            images = paddle.to_tensor(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
            features = backbone(images) + backbone(paddle.flip(images, axis=[3]))
            chunks.append(features.astype("float32").numpy())
    return np.concatenate(chunks, axis=0)


def ijb_figures(backbone, root, target, size, batch_size=64):
    """{'tar': {'1e-06': ..}, 'tpir': {'1e-03': ..}} of `backbone` on the release under `root`."""
    protocol = ijb.read_ijb_protocol(root, target)
    if not protocol.image_names or not len(protocol.labels):
        raise PlscError(f"Federated.ijbc_root: {root}/meta lists no {target} images or pairs")
    features = ijb_image_features(backbone, Path(root) / "loose_crop", protocol, size, batch_size)
    template_ids, template_features = ijb.pool_templates(features, protocol.templates, protocol.medias,
                                                         faceness=protocol.faceness, keep_norm=True)
    scores = ijb.verification_scores(template_ids, template_features, protocol.pairs[:, 0], protocol.pairs[:, 1])
    tar = tar_at_far(scores, protocol.labels, DEFAULT_FARS)
    figures = {"tar": {rate_name(far): value for far, value in tar.items()}}
    if protocol.one_to_n:
        identification = ijb.one_to_n(template_ids, template_features, protocol.one_to_n, ranks=(1,), fpirs=FPIRS)
        figures["tpir"] = {rate_name(fpir): value for fpir, value in identification["tpir"].items()}
    return figures
