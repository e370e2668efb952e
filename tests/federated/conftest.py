"""A tiny FedFR setup shared by the end-to-end tests: 40 synthetic identities, 2 clients, 16 px faces.

The data, split and generic model are made once per session; each test gives its clients their own
state folder name and its own output folder, so tests do not see each other's rounds.
"""
from pathlib import Path

import pytest

from plsc.federated.config import load_fedfr_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "configs" / "quickstart_fedfr.yaml"


def tiny_overrides(root):
    data = f"{root}/data"
    return [
        f"SyntheticData.root={data}/source", "SyntheticData.num_classes=40", "SyntheticData.images_per_class=8",
        "SyntheticData.num_pairs=40", "SyntheticData.num_workers=0",
        f"Federated.data_dir={data}/fedfr", f"Federated.Split.source={data}/source/train",
        "Federated.Split.num_clients=2", "Federated.Split.ids_per_client=4", "Federated.Split.veri_per_id=3",
        "Federated.Split.fl_min_images=7", "Federated.Split.fl_max_images=9", "Federated.Split.num_public=10",
        "Federated.Split.public_min_images=7", "Federated.Split.public_max_images=9",
        "Federated.rounds=2", "Federated.local_epochs=1", "Federated.min_local_epochs=1",
        "Federated.batch_size=16", "Federated.min_clients=1", "Federated.embed_batch_size=64",
        "Model.input_size=16", "Model.widths=[8, 8, 16, 16]", "Model.num_features=32", "Model.class_num=10",
        f"DataLoader.Train.dataset.image_root={data}/fedfr/public",
        f"DataLoader.Train.dataset.cls_label_path={data}/fedfr/public/label.txt",
        "DataLoader.Train.dataset.transform_ops.1.ResizeImage.size=16",
        "DataLoader.Train.sampler.batch_size=16", "DataLoader.Train.loader.num_workers=0",
        f"DataLoader.Eval.dataset.image_root={data}/source/verification",
        f"DataLoader.Eval.dataset.cls_label_path={data}/source/verification/label.txt",
        "DataLoader.Eval.dataset.transform_ops.1.ResizeImage.size=16",
        "Global.epochs=1", "LRScheduler.warmup_steps=2", "Global.device=cpu",
    ]


class TinySetup:
    def __init__(self, root):
        self.root = Path(root)
        self.generic = f"{root}/out/generic/IResNet/latest"

    def overrides(self, name, *extra):
        """Overrides of a test `name`: its own output folder and client state folder, the shared generic model."""
        return [*tiny_overrides(self.root), f"Global.output_dir={self.root}/{name}",
                f"Federated.client_state_name=state_{name}", f"Federated.generic_model={self.generic}", *extra]

    def config(self, name, *extra):
        return load_fedfr_config(str(DEMO_CONFIG), self.overrides(name, *extra))


@pytest.fixture(scope="session")
def tiny_fedfr(tmp_path_factory):
    """Data, split and generic model of the tiny setup (made by a first plsc-fedtrain stage)."""
    from plsc.federated.prepare import ensure_generic_model, prepare_data

    root = tmp_path_factory.mktemp("fedfr")
    config = load_fedfr_config(str(DEMO_CONFIG), [*tiny_overrides(root), f"Global.output_dir={root}/out"])
    summary = prepare_data(config, log=lambda _: None)
    ensure_generic_model(config, summary["public"]["identities"], log=lambda _: None)
    return TinySetup(root)
