"""FedFR's personalised evaluation of one client, and the average over clients.

1:1: the client's verification images against every verification image of every client (self
pairs excluded); genuine = same identity; TPR at each FPR by plsc.metrics.roc's rule.
1:N: gallery = the normalised mean of the client's L2-normalised training features per identity;
queries = every verification image; a query is mated when its identity is in the gallery. The
threshold is the k-th largest top score of the non-mated queries, k = ceil(#non-mated x FPIR)
(so every FPIR below 1 / #non-mated gives the largest one); TPIR = share of mated queries whose
score for their own identity exceeds it.
"""
import math

import numpy as np

from plsc.metrics.roc import tar_at_far


def l2_normalise(features):
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def gallery_means(train_features, train_labels, num_identities):
    """[L, D] normalised mean of each local identity's normalised features (labels 0..L-1)."""
    unit = l2_normalise(train_features)
    sums = np.zeros((num_identities, unit.shape[1]))
    np.add.at(sums, np.asarray(train_labels, dtype=np.int64), unit)
    return l2_normalise(sums)


def one_to_one(veri_features, veri_labels, own_mask, fprs):
    """{fpr: TPR} for own images (own_mask [N] bool) against all veri images [N, D] (labels [N])."""
    unit = l2_normalise(veri_features)
    own = np.flatnonzero(own_mask)
    scores = unit[own] @ unit.T
    genuine = veri_labels[own][:, None] == veri_labels[None, :]
    not_self = own[:, None] != np.arange(len(veri_labels))[None, :]
    # The ROC point with the largest FPR not above each target: the rule docs/federated.md's demo figures use.
    return tar_at_far(scores[not_self], genuine[not_self], fars=fprs, convention="at_most")


def one_to_n(gallery, gallery_labels, veri_features, veri_labels, fpirs):
    """{fpir: TPIR}; gallery [L, D] of identities gallery_labels [L] (veri label space)."""
    scores = l2_normalise(veri_features) @ l2_normalise(gallery).T
    column_of = {int(label): column for column, label in enumerate(gallery_labels)}
    mated = np.array([int(label) in column_of for label in veri_labels])
    nonmate_top = np.sort(scores[~mated].max(axis=1))[::-1] if (~mated).any() else np.zeros(0)
    mate_scores = np.array([scores[row, column_of[int(veri_labels[row])]] for row in np.flatnonzero(mated)])
    result = {}
    for fpir in fpirs:
        if nonmate_top.size == 0 or mate_scores.size == 0:
            result[fpir] = float("nan")
            continue
        k = max(1, math.ceil(nonmate_top.size * fpir))
        threshold = nonmate_top[min(k, nonmate_top.size) - 1]
        result[fpir] = float(np.mean(mate_scores > threshold))
    return result


def client_metrics(veri_features, veri_labels, train_features, train_labels, first_label, num_identities,
                   fprs, fpirs):
    """{'tpr': {'1e-01': value, ...}, 'tpir': {'1e-03': value, ...}} of one client (features from its own model)."""
    veri_labels = np.asarray(veri_labels, dtype=np.int64)
    own_mask = (veri_labels >= first_label) & (veri_labels < first_label + num_identities)
    gallery = gallery_means(train_features, train_labels, num_identities)
    gallery_labels = np.arange(first_label, first_label + num_identities)
    tpr = one_to_one(veri_features, veri_labels, own_mask, fprs)
    tpir = one_to_n(gallery, gallery_labels, veri_features, veri_labels, fpirs)
    return {"tpr": {rate_name(key): value for key, value in tpr.items()},
            "tpir": {rate_name(key): value for key, value in tpir.items()}}


def rate_name(rate):
    """'1e-02' for 0.01: the key of a figure in reports and messages."""
    return f"{float(rate):.0e}"


def average_metrics(per_client):
    """Mean over clients of each figure ({'tpr': {...}, 'tpir': {...}} each); NaN stays NaN."""
    if not per_client:
        return {}
    first = per_client[0]
    return {kind: {key: float(np.mean([client[kind][key] for client in per_client])) for key in first[kind]}
            for kind in first}
