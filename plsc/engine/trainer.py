"""The training loop: data -> backbone -> head -> loss -> backward -> step -> log -> eval -> save."""
import math
import os

import paddle

from plsc import distributed
from plsc.checkpoint import CheckpointManager, checkpoint_prefix, load_backbone_state
from plsc.engine.build import (CombinedLoss, build_backbone, build_evaluator, build_head, build_lr_schedule,
                               build_train_loader, check_supported, resolve_seed, select_device)
from plsc.engine.logger import Timer, TrainLogger, get_logger
from plsc.errors import PlscError
from plsc.loss.inputs import LossInputs


def prepare_synthetic_data(config, logger):
    """Generate the quickstart's synthetic faces on first use (rank 0 writes, the others wait)."""
    section = config.get("SyntheticData")
    if not section:
        return
    if distributed.is_main_process():
        from plsc.data.synthetic import ensure_quickstart_data

        # Every key of the section is a keyword of ensure_quickstart_data (the schema lists them).
        ensure_quickstart_data(**dict(section), log=logger.info)
    distributed.barrier()


class Trainer:
    """Builds every component from the config, then `train()` runs the loop."""

    def __init__(self, config):
        from plsc.amp import build_amp
        from plsc.optim import build_optimizer

        self.config = config
        glob = config.Global
        distributed.init()
        check_supported(config)
        self.device = select_device(glob.device)
        self.output_dir = os.path.join(glob.output_dir, config.Model.name)
        rank_suffix = "" if distributed.world_size() == 1 else f".rank{distributed.rank()}"
        self.logger = get_logger(os.path.join(self.output_dir, f"train{rank_suffix}.log"))
        prepare_synthetic_data(config, self.logger)

        self.seed = resolve_seed(glob.get("seed"))
        self.logger.info(f"seed: {self.seed}")
        paddle.seed(self.seed)  # the same initial weights on every rank
        self.train_loader = build_train_loader(config, self.seed)
        self.backbone = build_backbone(config.Model)
        self.head = build_head(config.Model, self.seed)
        distributed.broadcast_parameters(self.backbone.parameters())
        self.loss = CombinedLoss(config.Loss.Train)

        self.epochs = int(glob.epochs)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise PlscError("the training set is smaller than one global batch with drop_last: True")
        self.total_steps = self.epochs * self.steps_per_epoch
        if glob.get("max_train_step"):
            self.total_steps = min(self.total_steps, int(glob.max_train_step))
        self.schedule = build_lr_schedule(config.LRScheduler, self.epochs, self.steps_per_epoch)
        # The losses' class tables (CenterLoss centres) are sharded and updated sparsely like the head.
        self.optimizer = build_optimizer(config.Optimizer, self.backbone.named_parameters(),
                                         [self.head, *self.loss.attach(self.head)], lr=self.schedule.lr_at(0))
        self.amp = build_amp(config.get("FP16"))
        self.evaluator = build_evaluator(config) if glob.get("eval_during_train", True) else None
        self.checkpoints = CheckpointManager(self.output_dir, glob.get("max_num_latest_checkpoint", 0),
                                             self.logger)
        self.last_saved_step = None
        self.state = {"epoch": 0, "global_step": 0, "batches_done_in_epoch": 0, "best_metric": None,
                      "global_batch_size": self.train_loader.batch_sampler.global_batch_size}
        paddle.seed(self.seed + distributed.rank())  # dropout / drop-path differ per rank
        self.train_logger = TrainLogger(
            self.logger, glob.print_batch_step, self.total_steps,
            self.train_loader.batch_sampler.global_batch_size,
            visualdl_dir=os.path.join(glob.output_dir, "vdl") if glob.get("use_visualdl") else None)
        self._restore(glob)

    # ---- start state --------------------------------------------------------------------------
    def _restore(self, glob):
        if glob.get("checkpoint"):
            self.state, extra = self.checkpoints.load(glob.checkpoint, self.backbone, self.head,
                                                      self.optimizer, self.amp.scaler)
            if self.evaluator is not None and "evaluator" in extra:
                self.evaluator.set_state_dict(extra["evaluator"])
            self.loss.set_state_dict(extra.get("loss", {}))
            self.loss.load_tables(checkpoint_prefix(glob.checkpoint), self.state["global_step"],
                                  self.state["world_size"])
            distributed.barrier()  # every rank has read the checkpoint before any rank may overwrite it
            self._adapt_position_to_batch_size()
            self.logger.info(f"resumed from {glob.checkpoint} at epoch {self.state['epoch'] + 1}, "
                             f"global step {self.state['global_step']}")
        elif glob.get("pretrained_model") and not glob.get("finetune", False):
            path = glob.pretrained_model
            path = path if path.endswith(".pdparams") else f"{path}.pdparams"
            if not os.path.isfile(path):
                raise PlscError(f"Global.pretrained_model not found: {path}")
            load_backbone_state(self.backbone, paddle.load(path), path)
            self.logger.info(f"backbone initialised from {path}")

    def _adapt_position_to_batch_size(self):
        """Resuming with another global batch (e.g. on another number of ranks): keep the position in
        samples, so the epoch continues where it stopped and the LR schedule at the same progress."""
        saved = self.state.get("global_batch_size")
        current = self.train_loader.batch_sampler.global_batch_size
        self.state["global_batch_size"] = current
        if saved is None or saved == current:
            return
        samples_done = self.state["batches_done_in_epoch"] * saved
        self.state["batches_done_in_epoch"] = min(samples_done // current, self.steps_per_epoch)
        self.state["global_step"] = self.state["epoch"] * self.steps_per_epoch + self.state["batches_done_in_epoch"]
        self.logger.info(f"global batch changed from {saved} to {current}: continuing at sample {samples_done} "
                         f"of epoch {self.state['epoch'] + 1} (global step {self.state['global_step']})")

    # ---- one step -----------------------------------------------------------------------------
    def train_step(self, images, labels):
        """Forward, backward and update on one batch; returns (total loss, {name: loss})."""
        with self.amp.autocast():
            embeddings = self.backbone(images)
        embeddings = embeddings.astype("float32")
        cos_logits, local_labels = self.head(embeddings, labels)
        total, parts = self.loss(LossInputs(cos_logits, local_labels, embeddings, labels, self.head, self.backbone))
        self.amp.scaler.scale(total).backward()
        self.amp.scaler.step(self.optimizer)
        self.optimizer.clear_grad()
        return total, parts

    # ---- the loop -----------------------------------------------------------------------------
    def train(self):
        """Run to the end; a data error stops the run after saving the progress made so far."""
        try:
            return self._train()
        except PlscError as error:
            if distributed.world_size() > 1 or self.state["global_step"] == (self.last_saved_step or 0):
                raise  # other ranks wait in a collective: saving would hang, the launcher stops them
            self.save("latest")
            path = os.path.join(self.checkpoints.directory, "latest")
            raise PlscError(f"{error} -- stopped at global step {self.state['global_step']}; progress saved: "
                            f"fix the data, then resume with -o Global.checkpoint={path}") from None

    def _train(self):
        self.logger.info(f"training {self.config.Model.name} on {self.device}, {distributed.world_size()} "
                         f"rank(s), {self.steps_per_epoch} steps/epoch, {self.total_steps} steps")
        sampler = self.train_loader.batch_sampler
        dataset = self.train_loader.dataset if hasattr(self.train_loader, "dataset") else sampler.dataset
        last_eval_step = None
        while self.state["epoch"] < self.epochs and self.state["global_step"] < self.total_steps:
            epoch = self.state["epoch"]
            skip = self.state["batches_done_in_epoch"]
            sampler.set_epoch(epoch, skip_batches=skip)
            dataset.set_epoch(epoch)
            timer = Timer()
            for step_in_epoch, (images, labels) in enumerate(self.train_loader, start=skip + 1):
                reader_cost = timer.lap()
                lr = self.schedule.lr_at(self.state["global_step"])
                self.optimizer.set_lr(lr)
                total, parts = self.train_step(images, labels)
                self.state["global_step"] += 1
                self.state["batches_done_in_epoch"] = step_in_epoch
                losses = {name: float(value) for name, value in parts.items()}
                losses["loss"] = float(total)
                if not math.isfinite(losses["loss"]) and not self.amp.dynamic:
                    raise PlscError(f"loss is {losses['loss']} at step {self.state['global_step']}; lower "
                                    "LRScheduler.learning_rate or enable FP16 dynamic loss scaling")
                self.train_logger.record(self.state["global_step"], epoch, self.epochs, step_in_epoch,
                                         self.steps_per_epoch, lr, losses, timer.lap() + reader_cost,
                                         reader_cost, self.amp.loss_scale)
                if self._eval_due(epoch_end=False):
                    self.evaluate()
                    last_eval_step = self.state["global_step"]
                if self.state["global_step"] >= self.total_steps:
                    break
                timer.lap()
            if self.state["batches_done_in_epoch"] >= self.steps_per_epoch:
                self.state["epoch"] += 1
                self.state["batches_done_in_epoch"] = 0
                self._save_epoch()
                if self._eval_due(epoch_end=True):
                    self.evaluate()
                    last_eval_step = self.state["global_step"]
        if self.last_saved_step != self.state["global_step"]:
            self.save("latest")  # a max_train_step stop mid-epoch still leaves a checkpoint
        if self.evaluator is not None and last_eval_step != self.state["global_step"]:
            self.evaluate()
        self.train_logger.close()
        return self.state

    def _eval_due(self, epoch_end):
        glob = self.config.Global
        if self.evaluator is None:
            return False
        interval = max(1, int(glob.get("eval_interval", 1)))
        if glob.get("eval_unit", "step") == "epoch":
            return epoch_end and self.state["epoch"] % interval == 0
        return not epoch_end and self.state["global_step"] % interval == 0

    def _save_epoch(self):
        glob = self.config.Global
        interval = int(glob.get("save_interval", 1))
        if interval > 0 and self.state["epoch"] % interval == 0:
            self.save("latest")
            if int(glob.get("max_num_latest_checkpoint", 0)) != 0:
                self.save(f"epoch_{self.state['epoch']}")

    def save(self, prefix):
        extra = {"evaluator": self.evaluator.state_dict()} if self.evaluator is not None else {}
        extra["loss"] = self.loss.state_dict()  # running statistics, the same on every rank
        # Per-rank loss tables first: the checkpoint's .pdstates, written last, marks it complete.
        self.loss.save_tables(os.path.join(self.checkpoints.directory, prefix), self.state["global_step"])
        if prefix == "latest":
            self.last_saved_step = self.state["global_step"]
        path = self.checkpoints.save(prefix, self.state, self.backbone, self.head, self.optimizer,
                                     self.amp.scaler, extra)
        self.logger.info(f"saved checkpoint {path}")

    def evaluate(self):
        """Score every verification set; save `best_model` when the first set improves."""
        results = self.evaluator.evaluate(self.backbone)
        for name, figures in results.items():
            self.logger.info(f"[Eval] {name}: accuracy {figures['accuracy']:.5f} +- {figures['std']:.5f}, "
                             f"best {figures['best']:.5f}, threshold {figures['threshold']:.2f}, "
                             f"xnorm {figures['xnorm']:.3f}, global_step {self.state['global_step']}")
            self.train_logger.scalars(f"eval/{name}", {"accuracy": figures["accuracy"]}, self.state["global_step"])
        if not results:  # only set metrics (fairness, recall): reported, but no best model to pick
            return results
        primary = next(iter(results.values()))
        if self.state["best_metric"] is None or primary["metric"] > self.state["best_metric"]:
            self.state["best_metric"] = primary["metric"]
            self.save("best_model")
        return results
