"""State files are read without running code: plsc's own, PLSC 2.x's and paddle.save's load; code,
object arrays, truncated and foreign files are one-line PlscErrors naming the file."""
import os
import pickle

import numpy as np
import paddle
import pytest

from plsc.checkpoint import load_weights
from plsc.cli import eval_main, export_main
from plsc.errors import PlscError
from plsc.serialization import UnsafeStateError, load_state, save_state


class RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_plsc_state_round_trips_with_tensors_as_arrays(tmp_path):
    state = {"backbone.w": paddle.to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3)),
             "nested": {"steps": np.arange(3, dtype=np.int64), "scale": np.float32(2.5), "flag": True},
             "list": [1, 2.0, "three", None, (4, 5)], "global_step": 7}
    save_state(state, tmp_path / "a.pdparams")
    loaded = load_state(tmp_path / "a.pdparams")
    np.testing.assert_array_equal(loaded["backbone.w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert loaded["backbone.w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["nested"]["steps"], [0, 1, 2])
    assert loaded["nested"]["scale"] == np.float32(2.5) and loaded["nested"]["flag"] is True
    assert loaded["list"] == [1, 2.0, "three", None, (4, 5)] and loaded["global_step"] == 7
    # paddle.load reads what save_state writes, so users' own scripts keep working.
    np.testing.assert_array_equal(paddle.load(str(tmp_path / "a.pdparams"))["backbone.w"].numpy(),
                                  loaded["backbone.w"])
    assert os.listdir(tmp_path) == ["a.pdparams"]  # no temporary file left behind


def test_plsc_2x_and_paddle_save_files_load(tmp_path):
    """The files PLSC 2.4 writes with paddle.save: model and optimizer state dicts, .pdstates."""
    paddle.seed(1)
    model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
    optimizer = paddle.optimizer.Momentum(parameters=model.parameters(), learning_rate=0.1)
    model(paddle.ones([2, 3])).sum().backward()
    optimizer.step()
    paddle.save(model.state_dict(), str(tmp_path / "latest.pdparams"))
    paddle.save({**optimizer.state_dict(), "scaler_state": {"scale": paddle.to_tensor([1024.0])}},
                str(tmp_path / "latest.pdopt"))
    paddle.save({"epoch": 3, "global_step": 120, "metric": 0.98, "timestamp": 1.5e9},
                str(tmp_path / "latest.pdstates"))

    params = load_state(tmp_path / "latest.pdparams")
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(params[key], value.numpy())
    opt = load_state(tmp_path / "latest.pdopt")
    for key, value in optimizer.state_dict().items():
        if isinstance(value, paddle.Tensor):
            np.testing.assert_array_equal(opt[key], value.numpy())
    np.testing.assert_array_equal(opt["scaler_state"]["scale"], [1024.0])
    assert load_state(tmp_path / "latest.pdstates") == {"epoch": 3, "global_step": 120, "metric": 0.98,
                                                        "timestamp": 1.5e9}
    # As weights: paddle's name table is dropped, the parameters are there.
    weights, path = load_weights(str(tmp_path / "latest"))
    assert path.endswith("latest.pdparams") and set(weights) == set(model.state_dict())


def test_python2_era_protocol_2_pickle_loads(tmp_path):
    with open(tmp_path / "old.pdparams", "wb") as handle:
        pickle.dump({"w": np.ones((2, 2), dtype=">f4"), "name": "x"}, handle, protocol=2)
    loaded = load_state(tmp_path / "old.pdparams")
    np.testing.assert_array_equal(loaded["w"], np.ones((2, 2)))


@pytest.mark.parametrize("payload, refused", [
    ({"backbone.w": np.zeros(2), "x": RunsCode("MARKER")}, "posix.system"),
    (np.array([1, "a"], dtype=object), "not numeric"),
    ({"f": print}, "builtins.print"),
    (paddle.get_rng_state(), "GeneratorState"),
])
def test_anything_but_data_is_refused_without_running(tmp_path, payload, refused):
    marker = tmp_path / "MARKER"
    if isinstance(payload, dict) and "x" in payload:
        payload["x"] = RunsCode(marker)
    with open(tmp_path / "evil.pdstates", "wb") as handle:
        pickle.dump(payload, handle)
    with pytest.raises(UnsafeStateError, match=refused) as error:
        load_state(tmp_path / "evil.pdstates")
    assert str(error.value).startswith(str(tmp_path / "evil.pdstates")) and "\n" not in str(error.value)
    assert not marker.exists()  # the command never ran


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    save_state({"w": np.zeros((64, 64), dtype=np.float32)}, tmp_path / "good.pdopt")
    data = (tmp_path / "good.pdopt").read_bytes()
    (tmp_path / "cut.pdopt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pdopt").write_text("these are not the weights you are looking for\n")
    (tmp_path / "empty.pdopt").write_bytes(b"")
    for name in ("cut.pdopt", "text.pdopt", "empty.pdopt"):
        with pytest.raises(PlscError, match=r"truncated, corrupt or not a state file") as error:
            load_state(tmp_path / name)
        assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)
    with pytest.raises(PlscError, match="no such file"):
        load_state(tmp_path / "missing.pdopt")


def test_every_command_that_reads_weights_refuses_code(tmp_path, capsys):
    """plsc-eval, plsc-export and plsc-train's warm start all read through the safe loader."""
    marker = tmp_path / "MARKER"
    with open(tmp_path / "zoo.pdparams", "wb") as handle:
        pickle.dump({"backbone.conv.weight": RunsCode(marker)}, handle)
    from tests.task.tiny_quickstart import cli_args, tiny_overrides

    overrides = [*tiny_overrides(tmp_path, tmp_path / "data"), f"Global.pretrained_model={tmp_path}/zoo.pdparams"]
    for command in (eval_main, export_main):
        with pytest.raises(SystemExit) as exit_info:
            command(cli_args(overrides))
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert "zoo.pdparams: refused to load posix.system" in error, error
    assert not marker.exists()
