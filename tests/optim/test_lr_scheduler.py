"""LR schedules (Poly, Cosine, Step) with linear warmup, per step and per epoch, against formulas written here.

Spec (PLSC's Poly arithmetic, stated in plsc/optim/lr_scheduler.py's docstring): T = epochs * steps_per_epoch,
W = warmup_steps or warmup_epochs * steps_per_epoch; during warmup the rate rises linearly per step;
after it the decay runs over T - W steps, and with decay_unit 'epoch' it only changes at epoch starts.
"""
import math

import pytest

import plsc.optim  # noqa: F401  (fills LR_SCHEDULERS)
from plsc.errors import PlscError
from plsc.registry import LR_SCHEDULERS

EPOCHS, STEPS_PER_EPOCH = 6, 10
TOTAL = EPOCHS * STEPS_PER_EPOCH


def build(name, **kwargs):
    return LR_SCHEDULERS.build(name, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH, **kwargs)


def warmup_rate(step, warmup, start, end):
    return start + (end - start) * (step / warmup)


def decay_fraction(step, warmup, unit):
    """How far through the post-warmup decay `step` is; with epochs, counted from the epoch's first step."""
    if unit == "epoch":
        epoch = step // STEPS_PER_EPOCH
        step = epoch * STEPS_PER_EPOCH
    return min(1.0, max(0.0, (step - warmup) / (TOTAL - warmup)))


def poly(step, base, warmup, unit, start=0.0, end=None):
    if step < warmup:
        return warmup_rate(step, warmup, start, base if end is None else end)
    return base * (1.0 - decay_fraction(step, warmup, unit)) ** 2


def cosine(step, base, warmup, unit, eta_min=0.0):
    if step < warmup:
        return warmup_rate(step, warmup, 0.0, base)
    angle = math.pi * decay_fraction(step, warmup, unit)
    return eta_min + (base - eta_min) * (1.0 + math.cos(angle)) / 2.0


def piecewise(step, boundaries, values, warmup, unit, warmup_end):
    if step < warmup:
        return warmup_rate(step, warmup, 0.0, warmup_end)
    position = step // STEPS_PER_EPOCH if unit == "epoch" else step
    passed = sum(1 for boundary in boundaries if boundary <= position)
    return values[passed]


CASES = {
    # id: (registry name, kwargs, expected(step))
    "poly_step_warmup_steps": ("Poly", dict(learning_rate=0.1, decay_unit="step", warmup_steps=7),
                               lambda t: poly(t, 0.1, 7, "step")),
    "poly_step_warmup_epochs": ("Poly", dict(learning_rate=0.1, decay_unit="step", warmup_epochs=2,
                                             warmup_start_lr=0.01, warmup_end_lr=0.2),
                                lambda t: poly(t, 0.1, 20, "step", start=0.01, end=0.2)),
    "poly_epoch_warmup_epochs": ("Poly", dict(learning_rate=0.1, decay_unit="epoch", warmup_epochs=1),
                                 lambda t: poly(t, 0.1, 10, "epoch")),
    "poly_epoch_mid_epoch_warmup": ("Poly", dict(learning_rate=0.1, decay_unit="epoch", warmup_steps=15),
                                    lambda t: poly(t, 0.1, 15, "epoch")),
    "poly_no_warmup": ("Poly", dict(learning_rate=0.1), lambda t: poly(t, 0.1, 0, "step")),
    "cosine_step": ("Cosine", dict(learning_rate=0.05, decay_unit="step", warmup_steps=4, eta_min=0.001),
                    lambda t: cosine(t, 0.05, 4, "step", eta_min=0.001)),
    "cosine_epoch": ("Cosine", dict(learning_rate=0.05, decay_unit="epoch", warmup_epochs=2),
                     lambda t: cosine(t, 0.05, 20, "epoch")),
    "step_values_per_step": ("Step", dict(learning_rate=0.1, boundaries=[15, 40], values=[0.1, 0.01, 0.001],
                                          decay_unit="step", warmup_steps=5),
                             lambda t: piecewise(t, [15, 40], [0.1, 0.01, 0.001], 5, "step", 0.1)),
    "step_gamma_per_epoch": ("Step", dict(learning_rate=0.2, boundaries=[2, 4], gamma=0.5, decay_unit="epoch",
                                          warmup_epochs=1),
                             lambda t: piecewise(t, [2, 4], [0.2, 0.1, 0.05], 10, "epoch", 0.2)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_schedule_follows_its_formula_at_every_step(case):
    name, kwargs, expected = CASES[case]
    schedule = build(name, **kwargs)
    for step in range(TOTAL):
        assert schedule.lr_at(step) == pytest.approx(expected(step), rel=1e-12, abs=1e-15), f"step {step}"


def test_poly_by_hand_for_config_c_warmup():
    # MobileFaceNet config: learning_rate 0.1, warmup_steps 2, warmup_end_lr 0.1; T = 60, W = 2.
    schedule = build("Poly", learning_rate=0.1, decay_unit="step", warmup_steps=2, warmup_end_lr=0.1)
    assert schedule.lr_at(0) == 0.0
    assert schedule.lr_at(1) == pytest.approx(0.05)
    assert schedule.lr_at(2) == pytest.approx(0.1)
    assert schedule.lr_at(31) == pytest.approx(0.1 * 0.25)  # half way through the 58 decay steps
    assert schedule.lr_at(59) == pytest.approx(0.1 * (1 / 58) ** 2)


def test_epoch_unit_changes_rate_only_at_epoch_starts():
    schedule = build("Cosine", learning_rate=0.05, decay_unit="epoch", warmup_epochs=1)
    after_warmup = [schedule.lr_at(step) for step in range(STEPS_PER_EPOCH, TOTAL)]
    changes = [index + STEPS_PER_EPOCH for index in range(1, len(after_warmup))
               if after_warmup[index] != after_warmup[index - 1]]
    assert changes == list(range(2 * STEPS_PER_EPOCH, TOTAL, STEPS_PER_EPOCH))
    # warmup is per step even with epoch decay: ten distinct rates in the first epoch
    assert len({schedule.lr_at(step) for step in range(STEPS_PER_EPOCH)}) == STEPS_PER_EPOCH


def test_warmup_end_lr_zero_means_the_base_rate():
    schedule = build("Poly", learning_rate=0.3, warmup_steps=10)
    assert schedule.lr_at(5) == pytest.approx(0.15)


def test_past_the_last_step_the_rate_stays_at_the_end():
    assert build("Poly", learning_rate=0.1).lr_at(TOTAL + 5) == 0.0
    assert build("Cosine", learning_rate=0.1, eta_min=0.002).lr_at(TOTAL + 5) == pytest.approx(0.002)


@pytest.mark.parametrize("kwargs, words", [
    (dict(name="Poly", learning_rate=0.1, decay_unit="iteration"), "decay_unit"),
    (dict(name="Step", learning_rate=0.1, boundaries=[5, 2]), "increasing"),
    (dict(name="Step", learning_rate=0.1, boundaries=[5], values=[0.1]), "values"),
])
def test_bad_schedules_are_user_errors(kwargs, words):
    kwargs = dict(kwargs)
    with pytest.raises(PlscError, match=words):
        build(kwargs.pop("name"), **kwargs)


def test_zero_epochs_is_a_user_error():
    with pytest.raises(PlscError, match="epochs"):
        LR_SCHEDULERS.build("Poly", learning_rate=0.1, epochs=0, steps_per_epoch=10)


@pytest.mark.parametrize("name, kwargs", [("Poly", dict(warmup_steps=TOTAL)), ("Poly", dict(warmup_epochs=EPOCHS + 2)),
                                          ("Cosine", dict(warmup_steps=5 * TOTAL)), ("Step", dict(warmup_steps=TOTAL, boundaries=[3]))])
def test_warmup_as_long_as_the_run_is_shortened_with_one_warning(monkeypatch, capsys, name, kwargs):
    from plsc.config import notices

    monkeypatch.setattr(notices, "_ALREADY_SAID", set())
    schedules = [build(name, learning_rate=0.1, decay_unit="step", **kwargs) for _ in range(3)]
    warned = capsys.readouterr().err.strip().splitlines()
    assert len(warned) == 1 and warned[0].startswith("plsc: warning: LRScheduler: warmup of ")
    assert f"training ({TOTAL} steps" in warned[0] and f"over {TOTAL - 1} steps instead" in warned[0]
    schedule = schedules[0]
    assert schedule.warmup_steps == TOTAL - 1
    # Warmup rises linearly to the base rate over the shortened warmup; every step has a finite rate.
    rates = [schedule.lr_at(step) for step in range(TOTAL + 2)]
    assert all(math.isfinite(rate) for rate in rates)
    for step in range(TOTAL - 1):
        assert rates[step] == pytest.approx(0.1 * step / (TOTAL - 1))
    # The decay starts on the last step: at its start for Poly / Cosine, past boundary 3 for Step.
    assert rates[TOTAL - 1] == pytest.approx(0.01 if name == "Step" else 0.1)


def test_one_step_run_has_no_warmup(monkeypatch):
    from plsc.config import notices

    monkeypatch.setattr(notices, "_ALREADY_SAID", set())
    schedule = LR_SCHEDULERS.build("Poly", learning_rate=0.1, warmup_steps=50, epochs=1, steps_per_epoch=1)
    assert schedule.warmup_steps == 0 and schedule.lr_at(0) == pytest.approx(0.1)
