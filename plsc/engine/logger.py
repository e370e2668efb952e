"""Training log: PLSC-style lines on stdout and in `train.log`, scalars to VisualDL."""
import datetime
import logging
import os
import sys
import time

import numpy as np
import paddle

from plsc import distributed


class SmoothedValue:
    """Average of the values seen since the last reset (one print interval)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.total = 0.0
        self.count = 0

    def update(self, value, count=1):
        self.total += float(value) * count
        self.count += count

    @property
    def average(self):
        return self.total / max(self.count, 1)


class GroupLossMeter:
    """Per-group sums and counts of per-sample losses over one print interval.

    Each rank adds its own samples; `averages()` adds the ranks' sums and counts up, so every rank
    reports the same figures for the whole global batch.
    """

    def __init__(self, group_names):
        self.group_names = tuple(group_names)
        self.reset()

    def reset(self):
        self.sums = np.zeros(len(self.group_names), dtype=np.float64)
        self.counts = np.zeros(len(self.group_names), dtype=np.float64)

    def update(self, losses, groups):
        """losses: [n] per-sample losses; groups: [n] int64 index of each sample's group in group_names."""
        groups = np.asarray(groups, dtype=np.int64).reshape(-1)
        size = len(self.group_names)
        self.sums += np.bincount(groups, weights=np.asarray(losses, dtype=np.float64).reshape(-1), minlength=size)
        self.counts += np.bincount(groups, minlength=size)

    def averages(self):
        """{'loss_<group>': mean loss} over every rank's samples since the last reset; groups without
        samples are left out. A collective: every rank calls it at the same step."""
        totals = paddle.to_tensor(np.stack([self.sums, self.counts]))
        sums, counts = distributed.all_reduce(totals, "sum").numpy()
        return {f"loss_{name}": total / count for name, total, count in zip(self.group_names, sums, counts) if count}


def get_logger(log_file=None):
    """The `plsc` logger: rank 0 prints, every rank writes `log_file` (the latest call's file)."""
    logger = logging.getLogger("plsc")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    formatter = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    if distributed.is_main_process() and not any(getattr(h, "_plsc_stream", False) for h in logger.handlers):
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(formatter)
        stream._plsc_stream = True
        logger.addHandler(stream)
    if log_file:
        # A second run in the same process (tests, notebooks) logs to its own output folder.
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


class TrainLogger:
    """Collects per-step figures and prints one line every `print_batch_step` steps.

    With `group_names` (training data whose samples carry a group) it also reports the loss of each
    group, `loss_<group>`, averaged over the samples of the print interval, in the line and in VisualDL.
    """

    def __init__(self, logger, print_batch_step, total_steps, global_batch_size, visualdl_dir=None,
                 group_names=None):
        self.logger = logger
        self.print_batch_step = max(1, int(print_batch_step))
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.meters = {name: SmoothedValue() for name in ("batch_cost", "reader_cost")}
        self.losses = {}
        self.group_losses = GroupLossMeter(group_names) if group_names else None
        self.writer = None
        if visualdl_dir and distributed.is_main_process():
            from visualdl import LogWriter

            self.writer = LogWriter(logdir=visualdl_dir)

    def record(self, global_step, epoch, epochs, step_in_epoch, steps_per_epoch, lr, losses,
               batch_cost, reader_cost, loss_scale=None):
        self.meters["batch_cost"].update(batch_cost)
        self.meters["reader_cost"].update(reader_cost)
        for name, value in losses.items():
            self.losses.setdefault(name, SmoothedValue()).update(value)
        if self.writer is not None:
            for name, value in losses.items():
                self.writer.add_scalar(f"train/{name}", value, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)
        if global_step % self.print_batch_step != 0:
            return
        cost = self.meters["batch_cost"].average
        eta = datetime.timedelta(seconds=int(cost * max(self.total_steps - global_step, 0)))
        interval_losses = {name: meter.average for name, meter in self.losses.items()}
        if self.group_losses is not None:
            by_group = self.group_losses.averages()
            self.group_losses.reset()
            self.scalars("train", by_group, global_step)
            interval_losses.update(by_group)
        loss_text = ", ".join(f"{name}: {value:.5f}" for name, value in interval_losses.items())
        scale_text = f", loss_scale: {loss_scale:.1f}" if loss_scale is not None else ""
        self.logger.info(
            f"[Train] epoch: {epoch + 1}/{epochs}, step: {step_in_epoch}/{steps_per_epoch}, "
            f"global_step: {global_step}, lr: {lr:.6f}, {loss_text}{scale_text}, "
            f"batch_cost: {cost:.5f}s, reader_cost: {self.meters['reader_cost'].average:.5f}s, "
            f"ips: {self.global_batch_size / max(cost, 1e-9):.2f} images/sec, eta: {eta}")
        for meter in (*self.meters.values(), *self.losses.values()):
            meter.reset()

    @property
    def logs_groups(self):
        """Whether the training data has groups, i.e. the loss is logged per group."""
        return self.group_losses is not None

    def add_group_losses(self, losses, groups):
        """Add a micro-batch's per-sample losses ([n]) under their groups ([n] int64) to the interval."""
        self.group_losses.update(losses, groups)

    def scalars(self, prefix, values, global_step):
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, global_step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


class Timer:
    """Seconds since the last `lap()`."""

    def __init__(self):
        self.last = time.perf_counter()

    def lap(self):
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed
