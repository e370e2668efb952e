"""Each sample's loss, for logging the training loss per group (race, ...): never part of the objective.

The softmax losses compute each row's cross-entropy before taking the mean
(plsc.loss.target_softmax), so the per-row values cost N floats: a loss keeps its last rows in a
`KeptRows` (`kept_rows`), and CombinedLoss takes them right after the call. Losses without a
softmax (CenterLoss, GroupLoss) keep none and add nothing. MagFace's rows are its softmax part
(not the magnitude regulariser g); MixFairCosFace's include its bias term and CIFP margin.
"""


class KeptRows:
    """Holds the per-row losses [N] (no gradient) of a loss's last call until CombinedLoss takes them.

    A plain object: a Tensor attribute of a Layer would be registered (and saved) as a buffer.
    """

    def __init__(self):
        self._rows = None

    def keep(self, rows):
        self._rows = rows

    def take(self):
        rows, self._rows = self._rows, None
        return rows


def take_row_losses(loss):
    """The per-row losses [N_global] `loss` kept in its last call, emptying its slot; None if it keeps none."""
    kept = getattr(loss, "kept_rows", None)
    return kept.take() if kept is not None else None
