"""One FedFR client: a local round of training from the received global backbone, and its evaluation.

Only the backbone (and the shared public class centres) come back to the server. The client's
private state -- local class centres, transformation layer, personalisation head (W, b) and its
own backbone of the last round (the MOON "previous model") -- is saved per round in its folder
(`<client_dir>/<Federated.client_state_name>/round_NNN.state`), so a resumed run finds it as it was.
"""
import glob
import os
import re
import zlib

import numpy as np
import paddle
import paddle.nn as nn

from plsc.config.literals import evaluate_number
from plsc.errors import PlscError
from plsc.federated.images import embed_images, embed_transform_ops, image_set, train_transform_ops
from plsc.federated.losses import contrastive_loss, cosface_loss, personal_bce_loss
from plsc.federated.model_io import backbone_state, set_backbone_state
from plsc.federated.personal_eval import client_metrics, gallery_means
from plsc.federated.split import read_client_manifest
from plsc.models import build_backbone
from plsc.serialization import load_state, save_state

# Public images whose cosine to the client's images is searched this many at a time (bounded memory).
HARD_NEGATIVE_CHUNK = 8192


def select_hard_negatives(own_features, public_features, threshold, chunk=HARD_NEGATIVE_CHUNK):
    """Indices (int64, ascending) of public images whose cosine to any own image exceeds `threshold`.

    own_features: [M, D], public_features: [P, D], both L2-normalised.
    """
    own = np.asarray(own_features, dtype=np.float32)
    selected = []
    for start in range(0, len(public_features), chunk):
        block = np.asarray(public_features[start:start + chunk], dtype=np.float32)
        best = (block @ own.T).max(axis=1) if len(own) else np.full(len(block), -np.inf)
        selected.append(start + np.flatnonzero(best > threshold))
    return np.concatenate(selected).astype(np.int64) if selected else np.zeros(0, dtype=np.int64)


def client_seed(seed, name, round_index):
    """Seed of one client's round: the run seed, the client's name and the round number."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode()) + 7919 * int(round_index)) % (2**31)


class PersonalisationHead(nn.Layer):
    """Transformation layer T (Linear D->D, identity at start) and per-class weights W [L, D], bias b [L]."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.transform = nn.Linear(num_features, num_features,
                                   weight_attr=nn.initializer.Assign(np.eye(num_features, dtype=np.float32)),
                                   bias_attr=nn.initializer.Constant(0.0))
        self.class_weight = self.create_parameter([num_classes, num_features],
                                                  default_initializer=nn.initializer.Constant(0.0))
        self.class_bias = self.create_parameter([num_classes], default_initializer=nn.initializer.Constant(0.0))


class ClientClassifier(nn.Layer):
    """Class centres [local (kept by the client); public (shared)] for the CosFace term."""

    def __init__(self, local_centers, public_centers):
        super().__init__()
        self.local_centers = self.create_parameter(list(local_centers.shape),
                                                   default_initializer=nn.initializer.Assign(local_centers))
        self.public_centers = self.create_parameter(list(public_centers.shape),
                                                    default_initializer=nn.initializer.Assign(public_centers))

    def centers(self):
        return paddle.concat([self.local_centers, self.public_centers], axis=0)


class FedFRClient:
    """A client folder written by the split plus the run's config: `fit` runs one local round."""

    def __init__(self, config, client_dir, public_dir, veri_dir, log=print):
        self.config = config
        self.settings = config.Federated
        self.client_dir = client_dir
        self.manifest = read_client_manifest(client_dir)
        self.name = self.manifest["name"]
        self.num_identities = int(self.manifest["identities"])
        self.first_veri_label = int(self.manifest["first_veri_label"])
        self.public_dir, self.veri_dir = public_dir, veri_dir
        self.state_dir = os.path.join(client_dir, self.settings.client_state_name)
        self.log = log

    # ---- models -----------------------------------------------------------------------------
    def _backbone(self, state, training):
        backbone = build_backbone(self.config.Model)
        set_backbone_state(backbone, state, f"the backbone sent to {self.name}")
        backbone.train() if training else backbone.eval()
        return backbone

    # ---- private state ----------------------------------------------------------------------
    def state_path(self, round_index):
        return os.path.join(self.state_dir, f"round_{round_index:03d}.state")

    def saved_rounds(self):
        rounds = []
        for path in glob.glob(os.path.join(self.state_dir, "round_*.state")):
            match = re.search(r"round_(\d+)\.state$", path)
            if match:
                rounds.append(int(match.group(1)))
        return sorted(rounds)

    def load_private_state(self, before_round):
        """The private state saved by the latest round before `before_round`, or None."""
        earlier = [r for r in self.saved_rounds() if r < before_round]
        return load_state(self.state_path(earlier[-1])) if earlier else None

    def _save_private_state(self, round_index, classifier, head, backbone):
        state = {"round": round_index, "local_centers": classifier.local_centers.numpy(),
                 "transform_weight": head.transform.weight.numpy(), "transform_bias": head.transform.bias.numpy(),
                 "class_weight": head.class_weight.numpy(), "class_bias": head.class_bias.numpy(),
                 "backbone": backbone_state(backbone)}
        os.makedirs(self.state_dir, exist_ok=True)
        save_state(state, self.state_path(round_index))
        keep = int(self.settings.keep_client_rounds)
        if keep:
            for old in self.saved_rounds()[:-keep]:
                os.remove(self.state_path(old))

    # ---- data -------------------------------------------------------------------------------
    def _sets(self, seed):
        train_ops, embed_ops = train_transform_ops(self.config), embed_transform_ops(self.config)
        return {"own_train": image_set(self.client_dir, train_ops, seed),
                "own_embed": image_set(self.client_dir, embed_ops),
                "public_train": image_set(self.public_dir, train_ops, seed)}

    # ---- one round --------------------------------------------------------------------------
    def fit(self, plan, global_state, public_centers, public_features):
        """Local training of round plan['round'] from the global backbone; returns the update.

        plan: {'round', 'local_epochs', 'decay_epoch', 'seed', 'evaluate'}; public_centers [C, D];
        public_features [P, D] L2-normalised under the global backbone. Returns {'name',
        'backbone' (numpy state), 'public_centers', 'num_samples', 'num_hard_negatives', 'metrics'}.
        """
        round_index = int(plan["round"])
        seed = client_seed(plan["seed"], self.name, round_index)
        paddle.seed(seed)
        rng = np.random.default_rng(seed)
        fed = self.settings
        sets = self._sets(seed)
        own_labels = np.asarray(sets["own_train"].labels)
        if own_labels.size == 0 or own_labels.max() >= self.num_identities:
            raise PlscError(f"{self.client_dir}/label.txt: labels must be 0..{self.num_identities - 1}")
        if len(sets["public_train"]) != len(public_features):
            raise PlscError(f"{self.public_dir}: {len(sets['public_train'])} public images here, the server "
                            f"embedded {len(public_features)}: the client's public set differs from the server's")

        global_model = self._backbone(global_state, training=False)
        own_features = embed_images(global_model, sets["own_embed"], fed.embed_batch_size)
        hard = select_hard_negatives(own_features, public_features, fed.hard_negative_threshold)

        previous = self.load_private_state(round_index)
        model = self._backbone(global_state, training=True)
        # The reference draws a random model as "previous" in round 1; the received model is used here.
        previous_model = self._backbone(previous["backbone"] if previous else global_state, training=False)
        num_features = own_features.shape[1]
        if previous is None:
            # Local centres start at each identity's mean feature (imprinting); W starts from them.
            local_centers = gallery_means(own_features, own_labels, self.num_identities).astype(np.float32)
        else:
            local_centers = np.asarray(previous["local_centers"], dtype=np.float32)
        classifier = ClientClassifier(local_centers, np.asarray(public_centers, dtype=np.float32))
        head = PersonalisationHead(num_features, self.num_identities)
        with paddle.no_grad():
            if previous is None:
                head.class_weight.set_value(local_centers)
            else:
                head.transform.weight.set_value(np.asarray(previous["transform_weight"], dtype=np.float32))
                head.transform.bias.set_value(np.asarray(previous["transform_bias"], dtype=np.float32))
                head.class_weight.set_value(np.asarray(previous["class_weight"], dtype=np.float32))
                head.class_bias.set_value(np.asarray(previous["class_bias"], dtype=np.float32))

        public_labels = np.asarray(sets["public_train"].labels)[hard] + self.num_identities
        samples = ([(sets["own_train"], index, label) for index, label in enumerate(own_labels)]
                   + [(sets["public_train"], index, label) for index, label in zip(hard, public_labels)])
        optimizer = paddle.optimizer.Momentum(
            learning_rate=fed.learning_rate, momentum=fed.momentum, weight_decay=fed.weight_decay,
            parameters=[*model.parameters(), *classifier.parameters(), *head.parameters()])
        losses = self._train(plan, samples, rng, model, global_model, previous_model, classifier, head, optimizer)
        del global_model, previous_model

        self._save_private_state(round_index, classifier, head, model)
        metrics = self.evaluate_model(model, head.transform, sets["own_embed"]) if plan.get("evaluate") else {}
        self.log(f"client {self.name} round {round_index}: {len(own_labels)} own + {len(hard)} hard-negative "
                 f"public images, {int(plan['local_epochs'])} epochs, loss {losses}")
        return {"name": self.name, "backbone": backbone_state(model),
                "public_centers": classifier.public_centers.numpy(), "num_samples": len(samples),
                "num_hard_negatives": int(len(hard)), "metrics": metrics}

    def _train(self, plan, samples, rng, model, global_model, previous_model, classifier, head, optimizer):
        """The local epochs; returns the last epoch's mean of each loss term."""
        fed = self.settings
        weights = {"bce": fed.bce_loss_weight, "contrastive": fed.contrastive_loss_weight}
        bce_options = {"scale": fed.bce_scale, "margin": fed.bce_margin,
                       "positive_weight": evaluate_number(fed.bce_positive_weight),
                       "negative_weight": evaluate_number(fed.bce_negative_weight)}
        batch_size = int(fed.batch_size)
        epoch_means = {}
        for epoch in range(int(plan["local_epochs"])):
            lr = fed.learning_rate * (fed.lr_decay_gamma if epoch >= int(plan["decay_epoch"]) else 1.0)
            optimizer.set_lr(lr)
            for dataset in {id(s[0]): s[0] for s in samples}.values():
                dataset.set_epoch(int(plan["round"]) * 1000 + epoch)  # fresh augmentation every epoch
            order = rng.permutation(len(samples))
            sums, batches = {}, 0
            for start in range(0, len(order), batch_size):
                chosen = [samples[i] for i in order[start:start + batch_size]]
                if len(chosen) < 2:  # batch norm needs two samples
                    continue
                images = np.stack([dataset.read_sample(index)[0] for dataset, index, _ in chosen])
                labels = paddle.to_tensor(np.array([label for _, _, label in chosen], dtype=np.int64))
                images = paddle.to_tensor(images)
                embeddings = model(images)
                with paddle.no_grad():
                    global_embeddings = global_model(images)
                    previous_embeddings = previous_model(images)
                local_labels = paddle.where(labels < self.num_identities, labels, paddle.full_like(labels, -1))
                terms = {
                    "cosface": cosface_loss(embeddings, classifier.centers(), labels, fed.cosface_scale,
                                            fed.cosface_margin),
                    "bce": personal_bce_loss(head.transform(embeddings), head.class_weight, head.class_bias,
                                             local_labels, **bce_options),
                    "contrastive": contrastive_loss(embeddings, global_embeddings, previous_embeddings,
                                                    fed.contrastive_temperature),
                }
                total = terms["cosface"] + sum(weights[name] * terms[name] for name in weights)
                total.backward()
                optimizer.step()
                optimizer.clear_grad()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(value)
                batches += 1
            epoch_means = {name: round(value / max(batches, 1), 4) for name, value in sums.items()}
        return epoch_means

    # ---- evaluation -------------------------------------------------------------------------
    def evaluate_model(self, backbone, transform, own_embed_set=None):
        """Personalised figures of (backbone -> transform) on local_veri; transform None: backbone alone."""
        fed = self.settings
        own_embed_set = own_embed_set or image_set(self.client_dir, embed_transform_ops(self.config))
        veri_set = image_set(self.veri_dir, embed_transform_ops(self.config))
        veri_features = embed_images(backbone, veri_set, fed.embed_batch_size, transform)
        train_features = embed_images(backbone, own_embed_set, fed.embed_batch_size, transform)
        return client_metrics(veri_features, veri_set.labels, train_features, own_embed_set.labels,
                              self.first_veri_label, self.num_identities, fed.personal_fprs, fed.personal_fpirs)

    def evaluate_start(self, generic_state):
        """The same figures for the starting generic model (no personalisation)."""
        return self.evaluate_model(self._backbone(generic_state, training=False), None)

    def evaluate_saved_round(self, round_index):
        """Figures of the personalised model this client saved in round `round_index`."""
        path = self.state_path(round_index)
        if not os.path.isfile(path):
            raise PlscError(f"{path} not found: client {self.name} kept no state of round {round_index} "
                            f"(Federated.keep_client_rounds, or it dropped out of that round)")
        state = load_state(path)
        backbone = self._backbone(state["backbone"], training=False)
        head = PersonalisationHead(np.asarray(state["transform_weight"]).shape[0], self.num_identities)
        head.transform.weight.set_value(np.asarray(state["transform_weight"], dtype=np.float32))
        head.transform.bias.set_value(np.asarray(state["transform_bias"], dtype=np.float32))
        head.transform.eval()
        return self.evaluate_model(backbone, head.transform)
