"""MultiStep (MixFairFace's recipe) and ReduceOnPlateau with early stopping (FFEM's recipe)."""
import pytest

from plsc.errors import PlscError
from plsc.registry import LR_SCHEDULERS
import plsc.optim  # noqa: F401  (fills LR_SCHEDULERS)


def test_multistep_mixfairface_recipe():
    schedule = LR_SCHEDULERS.build("MultiStep", learning_rate=0.1, milestones=[8, 18, 30, 34], epochs=40,
                                   steps_per_epoch=10)
    expected = {0: 0.1, 79: 0.1, 80: 0.01, 179: 0.01, 180: 1e-3, 300: 1e-4, 340: 1e-5, 399: 1e-5}
    for step, lr in expected.items():
        assert schedule.lr_at(step) == pytest.approx(lr)


def test_reduce_on_plateau_and_early_stop():
    schedule = LR_SCHEDULERS.build("ReduceOnPlateau", learning_rate=1e-3, factor=0.5, patience=2, min_lr=3e-4,
                                   stop_patience=4, epochs=40, steps_per_epoch=10)
    decisions = [schedule.on_evaluation(metric) for metric in (0.5, 0.6, 0.6, 0.55)]
    assert decisions == [False] * 4 and schedule.lr_at(123) == pytest.approx(5e-4)  # 2 evaluations without gain
    assert schedule.on_evaluation(0.59) is False and schedule.lr_at(0) == pytest.approx(5e-4)
    assert schedule.on_evaluation(0.58) is True  # 4 without gain: stop
    assert schedule.lr_at(0) == pytest.approx(3e-4)  # halved again, but not below min_lr
    restored = LR_SCHEDULERS.build("ReduceOnPlateau", learning_rate=1e-3, epochs=40, steps_per_epoch=10)
    restored.set_state_dict(schedule.state_dict())
    assert restored.lr_at(0) == schedule.lr_at(0) and restored.best == 0.6
    assert restored.on_evaluation(0.7) is False and restored.evaluations_without_gain == 0
    with pytest.raises(PlscError):
        LR_SCHEDULERS.build("ReduceOnPlateau", learning_rate=1e-3, factor=1.5, epochs=1, steps_per_epoch=1)
