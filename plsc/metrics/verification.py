"""Pair verification accuracy (LFW protocol): threshold chosen on 9 folds, applied to the 10th."""
import numpy as np
from sklearn.model_selection import KFold

from plsc.registry import METRICS

# Squared distance between unit vectors lies in [0, 4]; the LFW protocol scans it in steps of 0.01.
THRESHOLDS = np.arange(0.0, 4.0, 0.01)


def pair_distances(embeddings):
    """embeddings [2P, D] in pair order -> squared distances [P] of the L2-normalised pairs."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = embeddings / np.maximum(norms, 1e-12)
    return np.sum((unit[0::2] - unit[1::2]) ** 2, axis=1)


def accuracy_at(distances, issame, thresholds):
    """Accuracy of `distance < t` as the same-identity decision, for each t: [len(thresholds)]."""
    predicted_same = distances[None, :] < thresholds[:, None]
    return np.mean(predicted_same == issame[None, :], axis=1)


def kfold_accuracy(distances, issame, nrof_folds=10, thresholds=THRESHOLDS):
    """Cross-validated accuracy: (mean, std, mean chosen threshold) over the folds."""
    issame = np.asarray(issame, dtype=bool)
    folds = KFold(n_splits=min(nrof_folds, len(issame)), shuffle=False)
    accuracies, chosen = [], []
    for train, test in folds.split(distances):
        best = thresholds[np.argmax(accuracy_at(distances[train], issame[train], thresholds))]
        chosen.append(best)
        accuracies.append(accuracy_at(distances[test], issame[test], np.array([best]))[0])
    return float(np.mean(accuracies)), float(np.std(accuracies)), float(np.mean(chosen))


def insightface_xnorm(image_embeddings):
    """Mean L2 norm of single-image embeddings ([M, D], images and mirrors alike), as insightface logs it."""
    return float(np.mean(np.linalg.norm(np.asarray(image_embeddings, dtype=np.float64), axis=1)))


@METRICS.register("LFWAcc")
class LFWAcc:
    """10-fold verification accuracy; with flip_test the evaluator sums image and mirror embeddings.

    `xnorm` follows insightface: the mean norm of the single-image embeddings (each image and each
    mirror image on its own), not of their sum, which is about twice as large.
    """

    def __init__(self, flip_test=True, nrof_folds=10):
        self.flip_test = flip_test
        self.nrof_folds = nrof_folds

    def __call__(self, embeddings, issame, image_embeddings=None):
        """embeddings [2P, D] (pair order, flip-summed with flip_test), issame [P] -> dict of figures.

        image_embeddings: [M, D] single-image embeddings (with flip_test: every image's and every
        mirror's), for the insightface xnorm. Without them a flip-summed set can only give the mean norm
        of the sums. Every figure is a number; `metric` is the one to maximise.
        """
        embeddings = np.asarray(embeddings)
        mean, std, threshold = kfold_accuracy(pair_distances(embeddings), issame, self.nrof_folds)
        xnorm = insightface_xnorm(embeddings if image_embeddings is None else image_embeddings)
        return {"accuracy": mean, "std": std, "threshold": threshold, "xnorm": xnorm, "metric": mean}
