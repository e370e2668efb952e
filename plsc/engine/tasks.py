"""What one training step optimises, chosen by `Global.task_type`; the trainer's loop is the same for all.

A task owns the modules beyond the backbone, its loss, its share of the checkpoint and its state:
  dense_parameters()   (structured name, Parameter) pairs the dense optimizer updates
  tables               {key: ClassTable} sharded class tables (sparse rows; resharded on resume)
  step(batch, amp, per_sample=False)
                       the forward and loss of one batch -> (total, {name: loss}, sample losses):
                       with per_sample, each of this rank's samples' loss (float32 numpy [n], no
                       gradient; the trainer logs them per group), else None
  model_state() / load_model_state(state, source)   the `P.pdparams` entries
  state_dict() / set_state_dict(state)              replicated extras in `P.pdopt`
  rank_state() / set_rank_state(state)              per-rank extras (RNGs), same layout only
  after_step(global_step)                           a side job after each step (pictures, ...)
  evaluates            whether the verification sets mean anything for this task
"""
import os

import paddle

from plsc import distributed
from plsc.checkpoint import load_backbone_state
from plsc.data.loader import batch_field
from plsc.engine.build import CombinedLoss, build_head
from plsc.errors import PlscError
from plsc.loss.inputs import LossInputs
from plsc.registry import TASKS

BACKBONE_PREFIX, DECODER_PREFIX = "backbone.", "decoder."


def side_inputs(backbone, batch):
    """Keyword inputs beyond the images a backbone declares (`side_inputs`), taken from the batch."""
    from plsc.engine.evaluator import takes_masked_flag

    is_masked = batch_field(batch, "is_masked")
    return {"is_masked": is_masked} if takes_masked_flag(backbone) and is_masked is not None else {}


@TASKS.register("recognition")
class RecognitionTask:
    """backbone -> Partial FC class layer -> margin losses (`Loss.Train`): PLSC's face recognition."""

    evaluates = True

    @staticmethod
    def check_config(config):
        for key, present in (("Model.class_num", config.Model.get("class_num") is not None),
                             ("Loss.Train", bool((config.get("Loss") or {}).get("Train")))):
            if not present:
                raise PlscError(f"missing required key {key} (Global.task_type 'recognition' needs it)")

    def __init__(self, config, backbone, seed, logger=None, output_dir=None):
        self.backbone = backbone
        self.head = build_head(config.Model, seed)
        self.loss = CombinedLoss(config.Loss.Train)
        loss_tables = self.loss.attach(self.head)
        # Checkpoint keys of the class tables: the class layer and the losses' tables.
        self.tables = {"head": self.head, **{f"loss.{key}": table for key, table in self.loss.tables().items()}}
        self.sparse_tables = [self.head, *loss_tables]

    def dense_parameters(self):
        return self.backbone.named_parameters()

    def step(self, batch, amp, per_sample=False):
        images, labels = batch_field(batch, "images"), batch_field(batch, "labels")
        with amp.autocast():
            embeddings = self.backbone(images, **side_inputs(self.backbone, batch))
        embeddings = embeddings.astype("float32")
        cos_logits, local_labels = self.head(embeddings, labels)
        inputs = LossInputs(cos_logits, local_labels, embeddings, labels, self.head, self.backbone)
        if not per_sample:
            total, named = self.loss(inputs)
            return total, named, None
        total, named, rows_global = self.loss.with_sample_losses(inputs)
        # The losses' rows are the global batch in rank order; this rank logs its own samples' share.
        rows = None if rows_global is None else distributed.rows_of_this_rank(rows_global, labels.shape[0]).numpy()
        return total, named, rows

    def model_state(self):
        return {BACKBONE_PREFIX + key: value for key, value in self.backbone.state_dict().items()}

    def load_model_state(self, state, source):
        load_backbone_state(self.backbone, state, source)

    def state_dict(self):
        return {"loss": self.loss.state_dict()}  # running statistics, the same on every rank

    def set_state_dict(self, state):
        self.loss.set_state_dict(state.get("loss", {}))

    def rank_state(self):
        return {"sampler_rng": self.head.rng_state()}

    def set_rank_state(self, state):
        self.head.set_rng_state(state["sampler_rng"])

    def after_step(self, global_step):
        pass


@TASKS.register("mae_pretrain")
class MAEPretrainTask:
    """Masked-autoencoder pre-training of a ViT encoder (FaceT): no labels, no class layer.

    The `MAE` config section sets the decoder and masking (plsc.models.mae.MAEPretrainModel's keys)
    and `image_interval`: every that many steps rank 0 writes `{output_dir}/mae/step_{N}.png`,
    original / masked input / reconstruction of the last batch. Checkpoints hold the encoder as
    `backbone.*` (so fine-tuning loads it like any backbone) and the decoder as `decoder.*`.
    """

    evaluates = False

    @staticmethod
    def check_config(config):
        pass  # every key has a default; the backbone is checked when it is built

    def __init__(self, config, backbone, seed, logger=None, output_dir=None):
        from plsc.models.mae import MAEPretrainModel

        if not (hasattr(backbone, "patch_tokens") and hasattr(backbone, "encode_tokens")):
            raise PlscError(f"Global.task_type 'mae_pretrain' needs a ViT encoder with patch tokens (FaceT_*); "
                            f"Model.name {config.Model.name} has none")
        section = dict(config.get("MAE") or {})
        self.image_interval = int(section.pop("image_interval", 0))
        self.model = MAEPretrainModel(backbone, **section)
        self.backbone = backbone
        self.picture_dir = os.path.join(output_dir or ".", "mae")
        self.tables, self.sparse_tables = {}, []
        self._last = None

    def dense_parameters(self):
        return self.model.named_parameters()

    def step(self, batch, amp, per_sample=False):
        images = batch_field(batch, "images")
        with amp.autocast():
            loss, prediction, mask = self.model(images)
        self._last = (images, prediction, mask)
        # The mean over the global batch, as the recognition loss is: the optimizer sums the dense
        # gradients over ranks, so each rank's share must carry 1/world of its own batch's mean.
        loss = distributed.all_reduce_sum_with_grad(loss.astype("float32")) / distributed.world_size()
        return loss, {"MAELoss": loss}, None  # a per-patch loss, no per-sample figure to log by group

    def after_step(self, global_step):
        if not self.image_interval or global_step % self.image_interval or not distributed.is_main_process():
            return
        from plsc.models.mae import write_png

        images, prediction, mask = self._last
        with paddle.no_grad():
            picture = self.model.reconstruction_grid(images, prediction.astype("float32"), mask)
        os.makedirs(self.picture_dir, exist_ok=True)
        write_png(os.path.join(self.picture_dir, f"step_{global_step}.png"), picture)

    def model_state(self):
        state = {}
        for key, value in self.model.state_dict().items():
            encoder = key.startswith("encoder.")
            state[(BACKBONE_PREFIX + key[len("encoder."):]) if encoder else DECODER_PREFIX + key] = value
        return state

    def load_model_state(self, state, source):
        load_backbone_state(self.backbone, {key: value for key, value in state.items()
                                            if key.startswith(BACKBONE_PREFIX)}, source)
        wanted = {key: value for key, value in self.model.state_dict().items() if not key.startswith("encoder.")}
        found = {key[len(DECODER_PREFIX):]: value for key, value in state.items() if key.startswith(DECODER_PREFIX)}
        if set(found) != set(wanted):
            raise PlscError(f"{source}: its decoder does not fit the MAE section: missing "
                            f"{sorted(set(wanted) - set(found))[:3]}, unexpected {sorted(set(found) - set(wanted))[:3]}")
        self.model.set_state_dict({key: paddle.to_tensor(value) for key, value in found.items()}, use_structured_name=True)

    def state_dict(self):
        return {}

    def set_state_dict(self, state):
        pass

    def rank_state(self):
        return {}

    def set_rank_state(self, state):
        pass


def build_task(config, backbone, seed, logger=None, output_dir=None):
    name = config.Global.get("task_type", "recognition")
    return TASKS.build(name, where="Global.task_type", config=config, backbone=backbone, seed=seed,
                       logger=logger, output_dir=output_dir)


def load_pretrained_backbone(backbone, state, source, log):
    """Warm start: the backbone from a weights file. From an MAE pre-training checkpoint (it has
    `decoder.*` entries) only the encoder is taken: the decoder is skipped, and the parameters the
    backbone lists in `pretraining_fresh` (FaceT: prompts, prompt pool, head) keep their fresh
    initialisation. Everything loaded, skipped and initialised is logged; a shape mismatch is an error."""
    if not any(key.startswith(DECODER_PREFIX) for key in state):
        load_backbone_state(backbone, state, source)
        log(f"backbone initialised from {source}")
        return
    fresh = tuple(getattr(backbone, "pretraining_fresh", ()))
    wanted = backbone.state_dict()
    loaded, skipped = {}, sorted(key for key in state if not key.startswith(BACKBONE_PREFIX) and key != "global_step")
    for key, value in state.items():
        if not key.startswith(BACKBONE_PREFIX):
            continue
        name = key[len(BACKBONE_PREFIX):]
        if name not in wanted or name.startswith(fresh):
            skipped.append(key)
            continue
        if list(value.shape) != list(wanted[name].shape):
            raise PlscError(f"{source}: {key} has shape {list(value.shape)}, Model.name's backbone needs "
                            f"{list(wanted[name].shape)}")
        loaded[name] = paddle.to_tensor(value).astype(wanted[name].dtype)
    backbone.set_state_dict(loaded)
    initialised = sorted(set(wanted) - set(loaded))
    log(f"backbone initialised from the MAE pre-training checkpoint {source}: loaded {len(loaded)} tensors "
        f"({', '.join(sorted(loaded))}); skipped {len(skipped)} ({', '.join(skipped)}); initialised fresh "
        f"{len(initialised)} ({', '.join(initialised)})")
