"""Numpy (float64) reference of MixFairCosFace, written from the paper's formulas; imports nothing of plsc."""
import math

import numpy as np


def unit(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def identity_bias(embeddings, mixed, permutation):
    """e_i = <f_mix,i, f_p(i)>^2 - <f_mix,i, f_i>^2."""
    f, f_mix = unit(embeddings), unit(mixed)
    return (f_mix * f[permutation]).sum(1) ** 2 - (f_mix * f).sum(1) ** 2


def cifp_margin(cos, labels, m):
    """Mean squared kept negative per row: the K = ceil(#neg / (C - 1)) largest negatives with cos_y - m > neg."""
    rows, classes = cos.shape
    negative = np.ones_like(cos, dtype=bool)
    negative[np.arange(rows), labels] = False
    values = cos[negative]
    keep = math.ceil(values.size / (classes - 1))
    order = np.argsort(-values, kind="stable")[:keep]
    top = np.zeros(values.size, dtype=bool)
    top[order] = True
    kept = np.zeros_like(cos, dtype=bool)
    kept[negative] = top
    kept &= (cos[np.arange(rows), labels][:, None] - m) > cos
    sums = (cos ** 2 * kept).sum(1)
    counts = kept.sum(1)
    return sums / np.maximum(counts, 1)


def mixfair_cosface_loss(cos, labels, bias, s, m, cifp):
    """Mean softmax CE of s * (cos - onehot * (m + e + m_cifp))."""
    cos = np.asarray(cos, np.float64)
    margin = m + np.asarray(bias, np.float64)
    if cifp:
        margin = margin + cifp_margin(cos, labels, m)
    logits = s * cos
    rows = np.arange(len(labels))
    logits[rows, labels] -= s * margin
    shift = logits.max(1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(1)) + shift[:, 0]
    return float(np.mean(log_norm - logits[rows, labels]))
