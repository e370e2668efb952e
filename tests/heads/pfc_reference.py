"""Numpy reference of a dense cosine classifier with combined margin, shared by the PartialFC tests.

Forward and analytic backward in float64, written from the formulas (not from plsc code).
"""
import math

import numpy as np


def _target_and_slope(cos_value, m1, m2, m3):
    theta = math.acos(min(1.0, max(-1.0, cos_value)))
    theta_max = (math.pi - m2) / m1
    if theta <= theta_max:
        return math.cos(m1 * theta + m2) - m3, m1 * math.sin(m1 * theta + m2) / math.sin(theta)
    return cos_value - 1.0 - math.cos(theta_max) - m3, 1.0


def dense_margin_softmax(embeddings, centers, labels, m1=1.0, m2=0.5, m3=0.0, s=64.0):
    """Loss and gradients of mean margin softmax CE over cos(x_i, w_j).

    embeddings [N, D], centers [C, D], labels [N] in [0, C)
    -> (loss, d loss / d embeddings [N, D], d loss / d centers [C, D], cosines [N, C]).
    """
    x = np.asarray(embeddings, np.float64)
    w = np.asarray(centers, np.float64)
    x_norm = np.linalg.norm(x, axis=1, keepdims=True)
    w_norm = np.linalg.norm(w, axis=1, keepdims=True)
    x_unit, w_unit = x / x_norm, w / w_norm
    cos = x_unit @ w_unit.T
    logits = s * cos
    slopes = np.full(cos.shape, s)
    rows = np.arange(len(labels))
    for row, label in zip(rows, labels):
        value, slope = _target_and_slope(cos[row, label], m1, m2, m3)
        logits[row, label], slopes[row, label] = s * value, s * slope

    shift = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(axis=1, keepdims=True)) + shift
    loss = np.mean(log_norm[:, 0] - logits[rows, labels])
    softmax = np.exp(logits - log_norm)
    softmax[rows, labels] -= 1.0
    grad_cos = softmax / len(labels) * slopes

    grad_x_unit = grad_cos @ w_unit
    grad_w_unit = grad_cos.T @ x_unit
    # Through v / |v|: project out the radial component, divide by the norm.
    grad_x = (grad_x_unit - x_unit * np.sum(grad_x_unit * x_unit, axis=1, keepdims=True)) / x_norm
    grad_w = (grad_w_unit - w_unit * np.sum(grad_w_unit * w_unit, axis=1, keepdims=True)) / w_norm
    return loss, grad_x, grad_w, cos
