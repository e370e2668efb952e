"""Numpy (float64) references of the literature's margin losses, written from the papers' formulas.

Each returns the loss and its analytic gradients; nothing here imports plsc.
"""
import math

import numpy as np


def softmax_cross_entropy(logits, labels):
    """Mean CE over rows and d loss / d logits: [N, C], [N] -> (float, [N, C])."""
    shift = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(axis=1, keepdims=True)) + shift
    rows = np.arange(len(labels))
    loss = float(np.mean(log_norm[:, 0] - logits[rows, labels]))
    grad = np.exp(logits - log_norm)
    grad[rows, labels] -= 1.0
    return loss, grad / len(labels)


def arc_target(cos_value, margin):
    """cos(theta + m), continued as cos(theta) - 1 + cos(m) past theta + m = pi.

    -> (value, d/dcos, d/dmargin).
    """
    theta = math.acos(cos_value)
    if theta + margin <= math.pi:
        return (math.cos(theta + margin), math.sin(theta + margin) / math.sin(theta),
                -math.sin(theta + margin))
    return cos_value - 1.0 + math.cos(margin), 1.0, -math.sin(margin)


def curricular_face(cos, labels, t_before, m, s):
    """CurricularFace step: t updated first with the batch's mean target cosine (momentum 0.01).

    -> (loss, d loss / d cos [N, C], t after the step, logits [N, C]).
    """
    cos = np.asarray(cos, np.float64)
    rows = np.arange(len(labels))
    t = 0.01 * cos[rows, labels].mean() + 0.99 * t_before
    logits, slopes = s * cos.copy(), np.full(cos.shape, s)
    for i, y in enumerate(labels):
        target, target_slope, _ = arc_target(cos[i, y], m)
        for j in range(cos.shape[1]):
            if j != y and cos[i, j] > target:  # hard negative: N(t, cos) = cos (t + cos)
                logits[i, j] = s * cos[i, j] * (t + cos[i, j])
                slopes[i, j] = s * (t + 2.0 * cos[i, j])
        logits[i, y], slopes[i, y] = s * target, s * target_slope
    loss, grad_logits = softmax_cross_entropy(logits, labels)
    return loss, grad_logits * slopes, t, logits


def ada_face(cos, labels, norms, mean_before, std_before, m=0.4, h=0.333, s=64.0, t_alpha=0.01, eps=1e-3):
    """AdaFace step with the running norm statistics updated first.

    -> (loss, d loss / d cos, (mean, std) after, logits, z_hat [N]).
    """
    cos = np.asarray(cos, np.float64)
    safe = np.clip(np.asarray(norms, np.float64), 0.001, 100.0)
    mean = t_alpha * safe.mean() + (1 - t_alpha) * mean_before
    std = t_alpha * safe.std(ddof=1) + (1 - t_alpha) * std_before
    z_hat = np.clip(h * (safe - mean) / (std + eps), -1.0, 1.0)
    logits, slopes = s * cos.copy(), np.full(cos.shape, s)
    for i, y in enumerate(labels):
        c = cos[i, y]
        inside = -1 + eps < c < 1 - eps
        theta = math.acos(min(max(c, -1 + eps), 1 - eps))
        shifted = theta - m * z_hat[i]
        moving = eps < shifted < math.pi - eps
        shifted = min(max(shifted, eps), math.pi - eps)
        logits[i, y] = s * (math.cos(shifted) - (m + m * z_hat[i]))
        # d cos(theta - m z) / d c = sin(theta - m z) / sin(theta) where neither clip holds it still
        slopes[i, y] = s * math.sin(shifted) / math.sin(theta) if inside and moving else 0.0
    loss, grad_logits = softmax_cross_entropy(logits, labels)
    return loss, grad_logits * slopes, (mean, std), logits, z_hat


def mag_face(cos, labels, norms, l_a, u_a, l_m, u_m, lambda_g, s):
    """MagFace loss and its gradients w.r.t. the cosines and the (unclipped) norms.

    -> (loss, d loss / d cos [N, C], d loss / d norms [N], margins [N]).
    """
    cos = np.asarray(cos, np.float64)
    norms = np.asarray(norms, np.float64)
    magnitude = np.clip(norms, l_a, u_a)
    moving = (norms > l_a) & (norms < u_a)
    margin_slope = (u_m - l_m) / (u_a - l_a)
    margins = l_m + margin_slope * (magnitude - l_a)
    logits, slopes = s * cos.copy(), np.full(cos.shape, s)
    target_margin_slopes = np.zeros(len(labels))
    for i, y in enumerate(labels):
        value, d_cos, d_margin = arc_target(cos[i, y], margins[i])
        logits[i, y], slopes[i, y] = s * value, s * d_cos
        target_margin_slopes[i] = s * d_margin
    classification, grad_logits = softmax_cross_entropy(logits, labels)
    n = len(labels)
    regularizer = np.mean(1.0 / magnitude + magnitude / u_a ** 2)
    rows = np.arange(n)
    grad_norms = (grad_logits[rows, labels] * target_margin_slopes * margin_slope
                  + lambda_g / n * (-1.0 / magnitude ** 2 + 1.0 / u_a ** 2)) * moving
    return classification + lambda_g * regularizer, grad_logits * slopes, grad_norms, margins


def l2_softmax(cos, labels, s):
    """-> (loss, d loss / d cos)."""
    loss, grad_logits = softmax_cross_entropy(s * np.asarray(cos, np.float64), labels)
    return loss, s * grad_logits


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def through_normalisation(x, grad_unit):
    """Gradient w.r.t. x of a function of x / |x|, given its gradient w.r.t. x / |x|: [N, D]."""
    unit = unit_rows(x)
    return (grad_unit - unit * np.sum(grad_unit * unit, axis=1, keepdims=True)) / np.linalg.norm(x, axis=1,
                                                                                               keepdims=True)


def center_loss(embeddings, labels, centers, normalize=True):
    """1/(2N) sum ||f_i - c_{y_i}||^2 with f = x/|x| (normalize) or x.

    centers: [C, D] the full table -> (loss, d/d embeddings [N, D], d/d centers [C, D]).
    """
    x = np.asarray(embeddings, np.float64)
    features = unit_rows(x) if normalize else x
    difference = features - centers[labels]
    n = len(labels)
    loss = 0.5 * np.sum(difference ** 2) / n
    grad_features = difference / n
    grad_centers = np.zeros_like(centers, dtype=np.float64)
    np.add.at(grad_centers, labels, -difference / n)
    grad_x = through_normalisation(x, grad_features) if normalize else grad_features
    return loss, grad_x, grad_centers


def group_loss(group_logits):
    """Self-distributed grouping: labels argmax(p - mean_batch p); -> (loss, d/d logits, labels)."""
    logits = np.asarray(group_logits, np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = np.argmax(p - p.mean(axis=0, keepdims=True), axis=1)
    loss, grad = softmax_cross_entropy(logits, labels)
    return loss, grad, labels
