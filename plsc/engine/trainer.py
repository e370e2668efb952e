"""The training loop: data -> backbone -> task (head + loss, or decoder) -> backward -> step -> log -> eval -> save.

What a step optimises is the task's (plsc/engine/tasks.py, `Global.task_type`): recognition with a
Partial FC class layer and margin losses, or MAE pre-training; the loop, checkpoints, resume, logging
and launch are the same for every task.
"""
import math
import os

import paddle

from plsc import distributed
from plsc.amp import NonFiniteError
from plsc.checkpoint import CheckpointManager, load_weights, paddle_rng_state, set_paddle_rng_state
from plsc.data.loader import batch_field
from plsc.engine.build import (build_backbone, build_evaluator, build_lr_schedule, build_train_loader,
                               check_supported, resolve_seed, select_device)
from plsc.engine.evaluator import format_figures
from plsc.engine.logger import Timer, TrainLogger, get_logger
from plsc.engine.tasks import build_task, load_pretrained_backbone
from plsc.errors import PlscError


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
        self.task = build_task(config, self.backbone, self.seed, self.logger, self.output_dir)
        # The same start on every rank (seeded alike; broadcast in case an initialiser is not).
        distributed.broadcast_parameters([parameter for _, parameter in self.task.dense_parameters()])

        self.epochs = int(glob.epochs)
        # Global.accum_steps (PLSC's key): K loader batches (micro-batches) make one optimizer step;
        # steps, the LR schedule and checkpoints count optimizer steps.
        self.accum_steps = int(glob.get("accum_steps", 1))
        self.steps_per_epoch = len(self.train_loader) // self.accum_steps
        if self.steps_per_epoch == 0:
            raise PlscError(f"the training set is smaller than one global batch x Global.accum_steps "
                            f"({self.accum_steps}) with drop_last: True")
        if len(self.train_loader) % self.accum_steps:
            self.logger.info(f"Global.accum_steps {self.accum_steps}: the last {len(self.train_loader) % self.accum_steps} "
                             "batch(es) of each epoch do not fill an optimizer step and are skipped")
        self.total_steps = self.epochs * self.steps_per_epoch
        if glob.get("max_train_step"):
            self.total_steps = min(self.total_steps, int(glob.max_train_step))
        self.schedule = build_lr_schedule(config.LRScheduler, self.epochs, self.steps_per_epoch)
        # The class tables (class centres, CenterLoss centres) are sharded and updated row-sparsely.
        self.optimizer = build_optimizer(config.Optimizer, self.task.dense_parameters(), self.task.sparse_tables,
                                         lr=self.schedule.lr_at(0), backbone=self.backbone)
        for line in self.optimizer.describe_groups():
            self.logger.info(f"optimizer: {line}")
        self.amp = build_amp(config.get("FP16"))
        self.evaluator = (build_evaluator(config) if glob.get("eval_during_train", True) and self.task.evaluates
                          else None)
        self.checkpoints = CheckpointManager(self.output_dir, glob.get("max_num_latest_checkpoint", 0),
                                             self.logger)
        self.last_saved_step = None
        self.state = {"epoch": 0, "global_step": 0, "batches_done_in_epoch": 0, "best_metric": None,
                      "global_batch_size": self.samples_per_step}
        paddle.seed(self.seed + distributed.rank())  # dropout / drop-path differ per rank
        self.train_logger = TrainLogger(
            self.logger, glob.print_batch_step, self.total_steps,
            self.samples_per_step,
            visualdl_dir=os.path.join(glob.output_dir, "vdl") if glob.get("use_visualdl") else None,
            group_names=getattr(self.train_loader.dataset, "group_names", None))
        self._restore(glob)

    # ---- start state --------------------------------------------------------------------------
    def _restore(self, glob):
        if glob.get("checkpoint"):
            self.state, extra, rank_state = self.checkpoints.load(glob.checkpoint, self.task.load_model_state,
                                                                  self.task.tables, self.optimizer, self.amp.scaler)
            if rank_state:  # the same layout: continue the very random streams of the interrupted run
                self.task.set_rank_state(rank_state)
                set_paddle_rng_state(rank_state["paddle_rng"])
            if self.evaluator is not None and "evaluator" in extra:
                self.evaluator.set_state_dict(extra["evaluator"])
            self.task.set_state_dict(extra)
            if "lr_schedule" in extra and hasattr(self.schedule, "set_state_dict"):
                self.schedule.set_state_dict(extra["lr_schedule"])
            self._keep_best_on_disk()
            self._adapt_position_to_batch_size()
            self.logger.info(f"resumed from {glob.checkpoint} at epoch {self.state['epoch'] + 1}, "
                             f"global step {self.state['global_step']}")
        elif glob.get("pretrained_model") and not glob.get("finetune", False):
            state, path = load_weights(glob.pretrained_model)
            load_pretrained_backbone(self.backbone, state, path, self.logger.info)
        self.checkpoints.remove_leftovers(keep=glob.get("checkpoint"))
        distributed.barrier()

    def _keep_best_on_disk(self):
        """A resumed run must not replace this directory's best_model with a worse one, even when the
        checkpoint it resumes from predates that best model."""
        saved = self.checkpoints.saved_states("best_model")
        best = saved.get("best_metric") if saved else None
        if best is not None and (self.state["best_metric"] is None or best > self.state["best_metric"]):
            self.state["best_metric"] = best

    def _adapt_position_to_batch_size(self):
        """Resuming with another global batch (e.g. on another number of ranks): keep the position in
        samples, so the epoch continues where it stopped and the LR schedule at the same progress."""
        saved = self.state.get("global_batch_size")
        current = self.samples_per_step
        self.state["global_batch_size"] = current
        if saved is None or saved == current:
            return
        samples_done = self.state["batches_done_in_epoch"] * saved
        self.state["batches_done_in_epoch"] = min(samples_done // current, self.steps_per_epoch)
        self.state["global_step"] = self.state["epoch"] * self.steps_per_epoch + self.state["batches_done_in_epoch"]
        self.logger.info(f"global batch changed from {saved} to {current}: continuing at sample {samples_done} "
                         f"of epoch {self.state['epoch'] + 1} (global step {self.state['global_step']})")

    # ---- one step -----------------------------------------------------------------------------
    @property
    def samples_per_step(self):
        """Images in one optimizer step over all ranks: the global batch x accum_steps."""
        return self.train_loader.batch_sampler.global_batch_size * self.accum_steps

    def train_step(self, *micro_batches):
        """One optimizer step over `accum_steps` batches [images, labels, is_masked(, group)]; returns
        their mean (total, {name: loss}). Batches with groups also hand their per-sample losses to the
        train logger.

        Each micro-batch's loss is divided by their count before its backward, so the summed
        gradients are those of the mean over all their samples (for batch-independent layers, one
        batch of them all). Without loss scaling (FP16 O0) a non-finite loss or gradient raises
        NonFiniteError before the optimizer runs, so the weights stay those of the previous step;
        with it, the scaler skips the whole step.
        """
        totals, named = [], {}
        for batch in micro_batches:
            total, parts, sample_losses = self.task.step(batch, self.amp, per_sample=self.train_logger.logs_groups)
            if not self.amp.scaler.enable and not math.isfinite(float(total)):
                raise NonFiniteError(f"loss is {float(total)}")
            if sample_losses is not None:
                self.train_logger.add_group_losses(sample_losses, batch_field(batch, "group").numpy())
            self.amp.scaler.scale(total / len(micro_batches)).backward()
            self.optimizer.accumulate_sparse()
            totals.append(float(total))
            for name, value in parts.items():
                named.setdefault(name, []).append(float(value))
        self.amp.scaler.step(self.optimizer)
        self.optimizer.clear_grad()
        return sum(totals) / len(totals), {name: sum(values) / len(values) for name, values in named.items()}

    # ---- the loop -----------------------------------------------------------------------------
    def train(self):
        """Run to the end. A data error stops the run after saving the progress made so far; a
        non-finite loss stops it without saving (the last checkpoint is the last good state)."""
        try:
            return self._train()
        except _DataStop as error:
            # Every rank got here together (see _agreed): save once, collectively, and say the same.
            if self.state["global_step"] == 0:
                raise PlscError(f"{error} -- stopped before the first step; nothing to save: fix the data "
                                "and start again") from None
            if self.state["global_step"] != self.last_saved_step:
                self.save("latest")
            path = os.path.join(self.checkpoints.directory, "latest")
            raise PlscError(f"{error} -- stopped at global step {self.state['global_step']}; progress saved: "
                            f"fix the data, then resume with -o Global.checkpoint={path}") from None
        except NonFiniteError as error:
            step = self.state["global_step"] + 1
            good = (f"resume from the last good checkpoint with -o Global.checkpoint="
                    f"{os.path.join(self.checkpoints.directory, 'latest')} (step {self.last_saved_step})"
                    if self.last_saved_step is not None else "no checkpoint was saved yet")
            raise PlscError(f"{error} at step {step}; the weights were not updated. Lower "
                            f"LRScheduler.learning_rate or enable FP16 dynamic loss scaling, then {good}") from None

    def _agreed(self, loader):
        """Iterate `loader`; a data error on any rank stops every rank at the same step with its message.

        One rank alone cannot stop: the others would wait in the next collective. So each step the
        ranks all-reduce an error flag (a no-op on one process) before using the batch.
        """
        batches = iter(loader)
        while True:
            error = None
            try:
                batch = next(batches)
            except StopIteration:
                return
            except PlscError as raised:
                error = str(raised)
            flag = paddle.to_tensor([1.0 if error else 0.0])
            distributed.all_reduce(flag, "max")
            if flag.item() > 0:
                messages = [message for message in distributed.all_gather_object(error) if message]
                raise _DataStop(messages[0])
            yield batch

    def _train(self):
        self.logger.info(f"training {self.config.Model.name} on {self.device}, {distributed.world_size()} "
                         f"rank(s), {self.steps_per_epoch} steps/epoch, {self.total_steps} steps")
        sampler = self.train_loader.batch_sampler
        dataset = self.train_loader.dataset if hasattr(self.train_loader, "dataset") else sampler.dataset
        last_eval_step = None
        while (self.state["epoch"] < self.epochs and self.state["global_step"] < self.total_steps
               and not self.state.get("stop_early")):
            epoch = self.state["epoch"]
            skip = self.state["batches_done_in_epoch"]
            sampler.set_epoch(epoch, skip_batches=skip * self.accum_steps)
            dataset.set_epoch(epoch)
            if getattr(dataset, "masked_ratio", 0):
                self.logger.info(f"epoch {epoch + 1} masked faces: {dataset.masked_counts()}")
            timer = Timer()
            steps = micro_batch_groups(self._agreed(self.train_loader), self.accum_steps)
            for step_in_epoch, micro_batches in enumerate(steps, start=skip + 1):
                reader_cost = timer.lap()
                lr = self.schedule.lr_at(self.state["global_step"])
                self.optimizer.set_lr(lr)
                total, parts = self.train_step(*micro_batches)
                self.state["global_step"] += 1
                self.state["batches_done_in_epoch"] = step_in_epoch
                losses = {name: float(value) for name, value in parts.items()}
                losses["loss"] = float(total)
                self.train_logger.record(self.state["global_step"], epoch, self.epochs, step_in_epoch,
                                         self.steps_per_epoch, lr, losses, timer.lap() + reader_cost,
                                         reader_cost, self.amp.loss_scale)
                self.task.after_step(self.state["global_step"])
                if self._eval_due(epoch_end=False):
                    self.evaluate()
                    last_eval_step = self.state["global_step"]
                if self.state["global_step"] >= self.total_steps or self.state.get("stop_early"):
                    break
                timer.lap()
            if self.state["batches_done_in_epoch"] >= self.steps_per_epoch:
                self.state["epoch"] += 1
                self.state["batches_done_in_epoch"] = 0
                # Evaluate before saving, so the checkpoint carries this evaluation's best metric.
                if self._eval_due(epoch_end=True):
                    self.evaluate()
                    last_eval_step = self.state["global_step"]
                self._save_epoch()
        final_eval = self.evaluator is not None and last_eval_step != self.state["global_step"]
        if final_eval:
            self.evaluate()
        if final_eval or self.last_saved_step != self.state["global_step"]:
            # A max_train_step stop mid-epoch still leaves a checkpoint, with the last evaluation in it.
            self.save("latest")
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

    def save(self, slot):
        """Checkpoint `slot` (latest, best_model, epoch_N) with everything a resume needs."""
        extra = {"evaluator": self.evaluator.state_dict()} if self.evaluator is not None else {}
        extra.update(self.task.state_dict())
        if hasattr(self.schedule, "state_dict"):  # schedules with state of their own (ReduceOnPlateau)
            extra["lr_schedule"] = self.schedule.state_dict()
        rank_state = {**self.task.rank_state(), "paddle_rng": paddle_rng_state()}
        path = self.checkpoints.save(slot, self.state, self.task.model_state(), self.task.tables, self.optimizer,
                                     self.amp.scaler, extra, rank_state)
        if slot == "latest":
            self.last_saved_step = self.state["global_step"]
        self.logger.info(f"saved checkpoint {path}")

    def evaluate(self):
        """Score every verification set; save `best_model` when the first set improves."""
        results = self.evaluator.evaluate(self.backbone)
        for name, figures in results.items():
            self.logger.info(f"[Eval] {format_figures(name, figures)}, global_step {self.state['global_step']}")
            self.train_logger.scalars(f"eval/{name}", {"accuracy": figures["accuracy"]}, self.state["global_step"])
        if not results:  # only set metrics (fairness, recall): reported, but no best model to pick
            return results
        primary = next(iter(results.values()))
        if self.state["best_metric"] is None or primary["metric"] > self.state["best_metric"]:
            self.state["best_metric"] = primary["metric"]
            self.save("best_model")
        # A schedule that follows the evaluation (ReduceOnPlateau) may lower the LR or end the run.
        on_evaluation = getattr(self.schedule, "on_evaluation", None)
        if on_evaluation is not None and on_evaluation(primary["metric"]):
            self.state["stop_early"] = True
            self.logger.info(f"stopping early at global step {self.state['global_step']}: no better "
                             f"{next(iter(results))} accuracy for the schedule's stop_patience evaluations")
        return results


def micro_batch_groups(batches, size):
    """Consecutive groups of `size` batches; an incomplete last group is dropped."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


class _DataStop(PlscError):
    """A data error, agreed on by every rank (its message is the first failing rank's)."""
