"""Learning-rate schedules: linear warmup, then Poly, Cosine or Step decay; pure functions of the step.

A schedule is built from the `LRScheduler` config keys plus `epochs` and `steps_per_epoch`, which the
trainer supplies (the per-rank loader length). `lr_at(step)` takes the global optimizer step count,
starting at 0, and holds no state, so resuming needs nothing but the step.

Arithmetic (PLSC's Poly schedule): T = epochs * steps_per_epoch, W = warmup_steps or, when that
is 0, warmup_epochs * steps_per_epoch. For t < W the rate rises linearly from warmup_start_lr to
warmup_end_lr (learning_rate when warmup_end_lr is 0, so `warmup_steps: N` alone warms up to the
base rate). From t = W on, the decay runs over the remaining T - W steps. With `decay_unit: epoch`
the decay sees the step rounded down to the start of its epoch, so the rate changes once per epoch;
the warmup stays per step.

A warmup as long as the run or longer (a smoke test with `-o Global.epochs=1`, a recipe on a small
data set) is shortened to T - 1 steps with a warning, so the rate still rises to its target and the
decay stays defined; PLSC and arcface_torch also run on in that case.
"""
import bisect
import math

from plsc.config.notices import warn_once
from plsc.errors import PlscError
from plsc.registry import LR_SCHEDULERS

DECAY_UNITS = ("step", "epoch")


def linear_warmup_lr(step, warmup_steps, start_lr, end_lr):
    """Rate at `step` (< warmup_steps) of a straight line from start_lr at 0 to end_lr at warmup_steps."""
    return start_lr + (end_lr - start_lr) * step / warmup_steps


def poly_lr(progress, base_lr, end_lr, power):
    """Polynomial decay from base_lr (progress 0) to end_lr (progress 1)."""
    return (base_lr - end_lr) * (1.0 - progress) ** power + end_lr


def cosine_lr(progress, base_lr, eta_min):
    """Half-cosine decay from base_lr (progress 0) to eta_min (progress 1)."""
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_lr(position, boundaries, values):
    """values[k] where k boundaries are <= position (boundaries sorted, len(values) = len(boundaries) + 1)."""
    return values[bisect.bisect_right(boundaries, position)]


class WarmupSchedule:
    """Linear warmup shared by every schedule; subclasses give the rate after warmup."""

    def __init__(self, learning_rate, decay_unit, warmup_steps, warmup_epochs, warmup_start_lr,
                 warmup_end_lr, epochs, steps_per_epoch):
        if decay_unit not in DECAY_UNITS:
            raise PlscError(f"LRScheduler.decay_unit must be one of {DECAY_UNITS}, got '{decay_unit}'")
        if epochs < 1 or steps_per_epoch < 1:
            raise PlscError(f"LRScheduler needs epochs >= 1 and steps per epoch >= 1, got {epochs} "
                            f"and {steps_per_epoch}")
        self.learning_rate = float(learning_rate)
        self.decay_unit = decay_unit
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(epochs) * self.steps_per_epoch
        self.warmup_steps = int(warmup_steps) or int(round(warmup_epochs * self.steps_per_epoch))
        if self.warmup_steps >= self.total_steps:
            shortened = self.total_steps - 1
            warn_once(f"LRScheduler: warmup of {self.warmup_steps} steps is not shorter than training "
                      f"({self.total_steps} steps = Global.epochs x steps per epoch); warming up over "
                      f"{shortened} steps instead")
            self.warmup_steps = shortened
        self.warmup_start_lr = float(warmup_start_lr)
        # PLSC's default warmup_end_lr is 0, which would warm up to nothing: 0 means the base rate.
        self.warmup_end_lr = float(warmup_end_lr) or self.learning_rate

    def lr_at(self, step):
        """Learning rate of global optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return linear_warmup_lr(step, self.warmup_steps, self.warmup_start_lr, self.warmup_end_lr)
        return self.decayed_lr(step)

    def decay_step(self, step):
        """The step the decay sees: the step itself, or the first step of its epoch (decay_unit epoch)."""
        if self.decay_unit == "epoch":
            return step // self.steps_per_epoch * self.steps_per_epoch
        return step

    def decay_progress(self, step):
        """Fraction of the post-warmup decay done at `step`, in [0, 1]."""
        done = (self.decay_step(step) - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        # An epoch-rounded step can fall before the end of a mid-epoch warmup; past T it stays at the end.
        return min(max(done, 0.0), 1.0)

    def decayed_lr(self, step):
        raise NotImplementedError


@LR_SCHEDULERS.register("Poly")
class Poly(WarmupSchedule):
    """Linear warmup, then base * (1 - progress)^power down to end_lr (PLSC fixes power at 2, end_lr at 0)."""

    def __init__(self, learning_rate, decay_unit="step", warmup_steps=0, warmup_epochs=0, warmup_start_lr=0.0,
                 warmup_end_lr=0.0, power=2.0, end_lr=0.0, *, epochs, steps_per_epoch):
        super().__init__(learning_rate, decay_unit, warmup_steps, warmup_epochs, warmup_start_lr,
                         warmup_end_lr, epochs, steps_per_epoch)
        self.power = float(power)
        self.end_lr = float(end_lr)

    def decayed_lr(self, step):
        return poly_lr(self.decay_progress(step), self.learning_rate, self.end_lr, self.power)


@LR_SCHEDULERS.register("Cosine")
class Cosine(WarmupSchedule):
    """Linear warmup, then a half cosine from the base rate down to eta_min."""

    def __init__(self, learning_rate, decay_unit="step", warmup_steps=0, warmup_epochs=0, warmup_start_lr=0.0,
                 warmup_end_lr=0.0, eta_min=0.0, *, epochs, steps_per_epoch):
        super().__init__(learning_rate, decay_unit, warmup_steps, warmup_epochs, warmup_start_lr,
                         warmup_end_lr, epochs, steps_per_epoch)
        self.eta_min = float(eta_min)

    def decayed_lr(self, step):
        return cosine_lr(self.decay_progress(step), self.learning_rate, self.eta_min)


@LR_SCHEDULERS.register("Step")
class Step(WarmupSchedule):
    """Linear warmup, then piecewise constant: `values[k]`, or base * gamma^k, after k boundaries.

    `boundaries` count epochs or steps as `decay_unit` says, from the start of training (not from
    the end of warmup), like insightface's `decay_epoch` lists. Without `values` the rates are
    learning_rate * gamma^k; with them `values` has one entry more than `boundaries` and
    learning_rate is only the warmup target.
    """

    def __init__(self, learning_rate, boundaries, values=None, gamma=0.1, decay_unit="step", warmup_steps=0,
                 warmup_epochs=0, warmup_start_lr=0.0, warmup_end_lr=0.0, *, epochs, steps_per_epoch):
        super().__init__(learning_rate, decay_unit, warmup_steps, warmup_epochs, warmup_start_lr,
                         warmup_end_lr, epochs, steps_per_epoch)
        self.boundaries = [int(boundary) for boundary in boundaries]
        if self.boundaries != sorted(self.boundaries):
            raise PlscError(f"LRScheduler.boundaries must be increasing, got {self.boundaries}")
        if values is None:
            values = [self.learning_rate * gamma ** k for k in range(len(self.boundaries) + 1)]
        if len(values) != len(self.boundaries) + 1:
            raise PlscError(f"LRScheduler.values needs len(boundaries) + 1 = {len(self.boundaries) + 1} "
                            f"entries, got {len(values)}")
        self.values = [float(value) for value in values]

    def decayed_lr(self, step):
        position = step // self.steps_per_epoch if self.decay_unit == "epoch" else step
        return step_lr(position, self.boundaries, self.values)


@LR_SCHEDULERS.register("MultiStep")
class MultiStep(Step):
    """learning_rate * gamma^k after k of the `milestones` (epochs by default), PyTorch's MultiStepLR
    under its own name (MixFairFace: milestones [8, 18, 30, 34], gamma 0.1); Step with gamma."""

    def __init__(self, learning_rate, milestones, gamma=0.1, decay_unit="epoch", warmup_steps=0, warmup_epochs=0,
                 warmup_start_lr=0.0, *, epochs, steps_per_epoch):
        super().__init__(learning_rate, boundaries=milestones, gamma=gamma, decay_unit=decay_unit,
                         warmup_steps=warmup_steps, warmup_epochs=warmup_epochs, warmup_start_lr=warmup_start_lr,
                         epochs=epochs, steps_per_epoch=steps_per_epoch)


@LR_SCHEDULERS.register("ReduceOnPlateau")
class ReduceOnPlateau:
    """A constant rate multiplied by `factor` whenever the evaluation metric has not improved (by more
    than `threshold`) for `patience` evaluations, never below `min_lr`; training stops after
    `stop_patience` evaluations without improvement (0: never). FFEM: factor 0.5, patience 2,
    min_lr 1e-4, stop after 7 epochs without a better recall@1.

    The trainer calls `on_evaluation(metric)` after each evaluation (higher is better); it returns
    True when training should stop. `state_dict()` / `set_state_dict()` carry the reductions across
    a resume.
    """

    def __init__(self, learning_rate, factor=0.5, patience=2, min_lr=0.0, threshold=0.0, stop_patience=0,
                 decay_unit="epoch", *, epochs, steps_per_epoch):
        if not 0.0 < factor < 1.0 or patience < 0 or stop_patience < 0 or min_lr < 0:
            raise PlscError(f"LRScheduler ReduceOnPlateau: need 0 < factor < 1, patience, stop_patience and min_lr "
                            f">= 0; got {factor}, {patience}, {stop_patience}, {min_lr}")
        self.learning_rate = float(learning_rate)
        self.factor, self.patience, self.min_lr = float(factor), int(patience), float(min_lr)
        self.threshold, self.stop_patience = float(threshold), int(stop_patience)
        self.decay_unit = decay_unit  # evaluations come when Global.eval_unit says; kept for the config's sake
        self.current_lr = self.learning_rate
        self.best = None
        self.evaluations_without_gain = 0
        self.evaluations_since_reduction = 0

    def lr_at(self, step):
        return self.current_lr

    def on_evaluation(self, metric):
        """Record an evaluation's metric (higher is better); returns True when training should stop."""
        metric = float(metric)
        if self.best is None or metric > self.best + self.threshold:
            self.best = metric
            self.evaluations_without_gain = self.evaluations_since_reduction = 0
            return False
        self.evaluations_without_gain += 1
        self.evaluations_since_reduction += 1
        if self.evaluations_since_reduction >= self.patience:
            self.current_lr = max(self.current_lr * self.factor, self.min_lr)
            self.evaluations_since_reduction = 0
        return bool(self.stop_patience) and self.evaluations_without_gain >= self.stop_patience

    def state_dict(self):
        return {"current_lr": self.current_lr, "best": self.best, "without_gain": self.evaluations_without_gain,
                "since_reduction": self.evaluations_since_reduction}

    def set_state_dict(self, state):
        self.current_lr, self.best = float(state["current_lr"]), state["best"]
        self.evaluations_without_gain = int(state["without_gain"])
        self.evaluations_since_reduction = int(state["since_reduction"])
