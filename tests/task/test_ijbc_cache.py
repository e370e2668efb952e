"""The IJB-C feature cache: features and key are one file, replaced atomically (onnx_ijbc.cached_features)."""
import importlib.util
import sys

import numpy as np
import pytest

from tests.task.tiny_quickstart import REPO_ROOT

SCRIPT_DIR = REPO_ROOT / "task" / "recognition" / "face"


@pytest.fixture(scope="module")
def onnx_ijbc():
    sys.path.insert(0, str(SCRIPT_DIR))
    try:
        spec = importlib.util.spec_from_file_location("onnx_ijbc_under_test", SCRIPT_DIR / "onnx_ijbc.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT_DIR))
    return module


def test_same_key_reuses_other_key_recomputes(onnx_ijbc, tmp_path):
    first = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert onnx_ijbc.cached_features(tmp_path, {"model_sha1": "a"}, lambda: first) is first
    reused = onnx_ijbc.cached_features(tmp_path, {"model_sha1": "a"}, lambda: pytest.fail("recomputed"))
    np.testing.assert_array_equal(reused, first)
    other = first + 1
    np.testing.assert_array_equal(onnx_ijbc.cached_features(tmp_path, {"model_sha1": "b"}, lambda: other), other)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["features.npz"]


def test_interrupted_write_leaves_the_previous_pair(onnx_ijbc, tmp_path, monkeypatch):
    old = np.zeros((2, 2), dtype=np.float32)
    onnx_ijbc.cached_features(tmp_path, {"model_sha1": "old"}, lambda: old)

    def killed(handle, **arrays):  # the process dies halfway through writing the new cache
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_ijbc.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        onnx_ijbc.cached_features(tmp_path, {"model_sha1": "new"}, lambda: np.ones((2, 2), dtype=np.float32))
    monkeypatch.undo()
    # The old model still finds its own features; the new model's key never matches them.
    np.testing.assert_array_equal(
        onnx_ijbc.cached_features(tmp_path, {"model_sha1": "old"}, lambda: pytest.fail("recomputed")), old)
    fresh = np.full((2, 2), 7, dtype=np.float32)
    assert sorted(path.name for path in tmp_path.iterdir())[0] == "features.npz"
    np.testing.assert_array_equal(onnx_ijbc.cached_features(tmp_path, {"model_sha1": "new"}, lambda: fresh), fresh)
    assert [path.name for path in tmp_path.iterdir()] == ["features.npz"]  # the torn partial file is gone


def test_cache_key_follows_the_model_bytes(onnx_ijbc, tmp_path):
    class Model:
        path = tmp_path / "m.onnx"
        input_mean, input_std = 127.5, 127.5

    class Protocol:
        image_names = ["1.jpg", "2.jpg"]
        landmarks = np.zeros((2, 5, 2), dtype=np.float32)

    Model.path.write_bytes(b"model one")
    first = onnx_ijbc.cache_key(Model, Protocol, tmp_path)
    Model.path.write_bytes(b"model two")  # same size, same path
    assert onnx_ijbc.cache_key(Model, Protocol, tmp_path)["model_sha1"] != first["model_sha1"]
