"""Learning-rate schedules: linear warmup, then Poly, Cosine or Step decay; pure functions of the step.

A schedule is built from the `LRScheduler` config keys plus `epochs` and `steps_per_epoch`, which the
trainer supplies (the per-rank loader length). `lr_at(step)` takes the global optimizer step count,
starting at 0, and holds no state, so resuming needs nothing but the step.

Arithmetic (PLSC_FACTS.md section 3): T = epochs * steps_per_epoch, W = warmup_steps or, when that
is 0, warmup_epochs * steps_per_epoch. For t < W the rate rises linearly from warmup_start_lr to
warmup_end_lr (learning_rate when warmup_end_lr is 0, so `warmup_steps: N` alone warms up to the
base rate). From t = W on, the decay runs over the remaining T - W steps. With `decay_unit: epoch`
the decay sees the step rounded down to the start of its epoch, so the rate changes once per epoch;
the warmup stays per step.
"""
import bisect
import math

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
            raise PlscError(f"LRScheduler warmup ({self.warmup_steps} steps) must be shorter than training "
                            f"({self.total_steps} steps = Global.epochs x steps per epoch)")
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
