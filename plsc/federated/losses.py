"""FedFR's client loss terms as pure functions of tensors.

CosFace over [local; public] class centres, the personalisation head's binary cross-entropy on the
warped cosine g(c), and the MOON model-contrastive term (Li et al., CVPR 2021).
"""
import paddle
import paddle.nn.functional as F

from plsc.loss.target_softmax import target_softmax_cross_entropy


def cosine_matrix(embeddings, centers):
    """Cosine of each embedding with each centre: [N, D] x [C, D] -> [N, C]."""
    return paddle.matmul(F.normalize(embeddings, axis=1), F.normalize(centers, axis=1), transpose_y=True)


def cosface_loss(embeddings, centers, labels, scale=30.0, margin=0.4):
    """Mean CosFace cross-entropy: s * (cos - m) on the target column, s * cos elsewhere: scalar.

    embeddings: [N, D]; centers: [C, D] (the client's local rows, then the public rows); labels: [N]
    int64 column of each target.
    """
    return target_softmax_cross_entropy(cosine_matrix(embeddings, centers), labels.reshape([-1]), scale, False,
                                        target_fn=lambda cos_target: cos_target - margin)


def warp_cosine(cos):
    """g(c) = 2 ((c + 1) / 2)^3 - 1: keeps [-1, 1], flattens low cosines and stretches high ones."""
    return 2.0 * ((cos + 1.0) / 2.0) ** 3 - 1.0


def personal_bce_loss(features, class_weight, class_bias, labels, scale=30.0, margin=0.4,
                      positive_weight=0.7 / 30.0, negative_weight=0.3 / 30.0):
    """Binary cross-entropy of the personalisation head, summed over classes, mean over the batch: scalar.

    features: [N, D] (after the transformation layer); class_weight: [L, D]; class_bias: [L];
    labels: [N] int64 local class, or -1 for a public image (a negative for every local class).
    Logits are s (g(c) - m) for the own class and s (g(c) + m) for the others, plus the bias.
    """
    warped = warp_cosine(cosine_matrix(features, class_weight))
    num_classes = class_weight.shape[0]
    labels = labels.reshape([-1])
    is_local = (labels >= 0).astype(warped.dtype).unsqueeze(1)
    positive = F.one_hot(labels.clip(min=0), num_classes).astype(warped.dtype) * is_local
    logits = scale * (warped - margin * (2.0 * positive - 1.0)) + class_bias.unsqueeze(0)
    element_weight = positive * positive_weight + (1.0 - positive) * negative_weight
    losses = F.binary_cross_entropy_with_logits(logits, positive, weight=element_weight, reduction="none")
    return losses.sum(axis=1).mean()


def contrastive_loss(embeddings, global_embeddings, previous_embeddings, temperature=0.5):
    """MOON term: cross-entropy of [cos(z, z_global), cos(z, z_prev)] / t with target 0, mean: scalar.

    embeddings, global_embeddings, previous_embeddings: [N, D]; the last two come from frozen models.
    """
    positive = F.cosine_similarity(embeddings, global_embeddings, axis=1) / temperature
    negative = F.cosine_similarity(embeddings, previous_embeddings, axis=1) / temperature
    both = paddle.stack([positive, negative], axis=1)
    return (paddle.logsumexp(both, axis=1) - positive).mean()
