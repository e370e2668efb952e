"""The FedFR server: the round schedule, public features, weighted FedAvg and round checkpoints."""
import glob
import os
import re

import numpy as np

from plsc.errors import PlscError
from plsc.federated.images import embed_images, embed_transform_ops, image_set
from plsc.federated.model_io import set_backbone_state
from plsc.models import build_backbone
from plsc.serialization import load_state, save_state

ROUND_FILE = re.compile(r"round_(\d+)\.state$")


def local_epochs_for_round(round_index, start, minimum, step):
    """E of round r (1-based): E_1 = start, then E <- max(minimum, E - step) each round."""
    # A start below the minimum stays where it is rather than growing.
    return max(min(start, minimum), start - step * (round_index - 1))


def decay_epoch(local_epochs, fraction):
    """The epoch from which the local LR is multiplied by gamma: max(1, int(fraction * E))."""
    return max(1, int(fraction * local_epochs))


def fedavg_weights(num_samples):
    """Each client's share n_k / sum n: [K] float64."""
    counts = np.asarray(num_samples, dtype=np.float64)
    if counts.size == 0 or np.any(counts < 0) or counts.sum() <= 0:
        raise PlscError(f"FedAvg needs positive sample counts, got {list(num_samples)}")
    return counts / counts.sum()


def weighted_average(arrays, weights):
    """sum_k w_k a_k in float64, returned in the first array's dtype (integer buffers are rounded)."""
    total = sum(weight * np.asarray(array, dtype=np.float64) for array, weight in zip(arrays, weights))
    dtype = np.asarray(arrays[0]).dtype
    return np.rint(total).astype(dtype) if np.issubdtype(dtype, np.integer) else total.astype(dtype)


def fedavg(states, num_samples):
    """Weighted FedAvg of numpy state dicts (same keys): {name: array}."""
    weights = fedavg_weights(num_samples)
    return {name: weighted_average([state[name] for state in states], weights) for name in states[0]}


def round_checkpoint_path(directory, round_index):
    return os.path.join(directory, f"round_{round_index:03d}.state")


def resolve_round_checkpoint(path):
    """`.../round_003` or `.../round_003.state` -> the file; a PlscError naming Global.checkpoint if absent."""
    candidate = path if path.endswith(".state") else f"{path}.state"
    if not os.path.isfile(candidate):
        raise PlscError(f"Global.checkpoint: round checkpoint {candidate} not found")
    return candidate


class FedFRServer:
    """The global state: backbone, public class centres, round number, evaluation history."""

    def __init__(self, config, backbone_state, public_centers, round_index=0, history=None, start=None):
        self.config = config
        self.settings = config.Federated
        self.backbone_state = backbone_state
        self.public_centers = np.asarray(public_centers, dtype=np.float32)
        self.round = round_index  # rounds completed
        self.history = list(history or [])
        self.start = start  # evaluation of the starting generic model

    # ---- schedule ---------------------------------------------------------------------------
    def plan(self, round_index):
        """What every client needs to know about round `round_index` (1-based), as plain values."""
        fed = self.settings
        epochs = local_epochs_for_round(round_index, fed.local_epochs, fed.min_local_epochs, fed.local_epochs_step)
        return {"round": round_index, "local_epochs": epochs,
                "decay_epoch": decay_epoch(epochs, fed.lr_decay_fraction),
                "seed": int(fed.seed), "evaluate": bool(fed.eval_every_round)}

    # ---- public features ----------------------------------------------------------------------
    def public_features(self, public_dir):
        """L2-normalised features [P, D] of every public image under the current global backbone."""
        backbone = self.global_backbone()
        dataset = image_set(public_dir, embed_transform_ops(self.config))
        return embed_images(backbone, dataset, self.settings.embed_batch_size)

    def global_backbone(self):
        backbone = build_backbone(self.config.Model)
        set_backbone_state(backbone, self.backbone_state, "the global backbone")
        backbone.eval()
        return backbone

    # ---- aggregation --------------------------------------------------------------------------
    def aggregate(self, updates):
        """FedAvg of the returned clients' backbones (and public centres), weighted by training-set size.

        updates: list of {'backbone', 'public_centers', 'num_samples'}, in a fixed (client name) order.
        """
        counts = [update["num_samples"] for update in updates]
        self.backbone_state = fedavg([update["backbone"] for update in updates], counts)
        if self.settings.average_public_centers:
            self.public_centers = weighted_average([update["public_centers"] for update in updates],
                                                   fedavg_weights(counts)).astype(np.float32)
        self.round += 1

    # ---- checkpoints --------------------------------------------------------------------------
    def state_dict(self):
        return {"round": self.round, "backbone": self.backbone_state, "public_centers": self.public_centers,
                "history": self.history, "start": self.start}

    def save(self, directory):
        os.makedirs(directory, exist_ok=True)
        path = round_checkpoint_path(directory, self.round)
        save_state(self.state_dict(), path)
        return path

    @classmethod
    def load(cls, config, path):
        state = load_state(resolve_round_checkpoint(path))
        try:
            return cls(config, {k: np.asarray(v) for k, v in state["backbone"].items()}, state["public_centers"],
                       int(state["round"]), state.get("history"), state.get("start"))
        except (KeyError, TypeError, AttributeError) as error:
            raise PlscError(f"{path}: not a FedFR round checkpoint ({error})") from None


def saved_rounds(directory):
    """Round numbers of the checkpoints in `directory`, ascending."""
    found = (ROUND_FILE.search(path) for path in glob.glob(os.path.join(directory, "round_*.state")))
    return sorted(int(match.group(1)) for match in found if match)


def min_clients_met(returned, settings, num_clients):
    """True when enough clients returned: at least min(Federated.min_clients, clients taking part)."""
    return returned >= min(int(settings.min_clients), num_clients) and returned > 0


__all__ = ["FedFRServer", "fedavg", "fedavg_weights", "local_epochs_for_round", "decay_epoch",
           "resolve_round_checkpoint", "round_checkpoint_path", "saved_rounds", "min_clients_met"]
