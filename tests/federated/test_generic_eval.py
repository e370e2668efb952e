"""The generic figures of a round: verification accuracy and, with Federated.ijbc_root, IJB-C 1:1 and 1:N."""
import math

import pytest

from plsc.federated.model_io import load_generic_model
from plsc.federated.rounds import generic_figures
from plsc.federated.server import FedFRServer

pytestmark = pytest.mark.slow


def test_generic_figures_include_ijbc_when_given(tiny_fedfr, tmp_path):
    from plsc.data.synthetic.ijbc import write_synthetic_ijbc

    root = write_synthetic_ijbc(tmp_path / "IJBC", num_subjects=4, templates_per_subject=2,
                                medias_per_template=1, images_per_media=2, seed=3)
    config = tiny_fedfr.config("ijbc", f"Federated.ijbc_root={root}")
    state, centers = load_generic_model(tiny_fedfr.generic, 10)
    figures = generic_figures(config, FedFRServer(config, state, centers).global_backbone())
    assert 0.0 <= figures["verification acc"] <= 1.0
    tar_keys = [key for key in figures if key.startswith("IJBC TAR@")]
    assert "IJBC TAR@1e-01" in tar_keys and len(tar_keys) == 6
    assert any(key.startswith("IJBC TPIR@") for key in figures)
    assert all(math.isnan(value) or 0.0 <= value <= 1.0 for value in figures.values())
