"""The FedFR split protocol on a hand-made image folder (file bytes name their source)."""
import json
import os

import numpy as np
import pytest

from plsc.errors import PlscError
from plsc.federated.split import SplitParameters, main, plan_split, split_dataset


def make_source(root, counts):
    """Identity i gets counts[i] images whose bytes say 'i/k'; label.txt lists them in record order."""
    lines = []
    for identity, count in enumerate(counts):
        for k in range(count):
            relative = f"img/{identity}_{k}.jpg"
            os.makedirs(os.path.join(root, "img"), exist_ok=True)
            with open(os.path.join(root, relative), "w") as handle:
                handle.write(f"{identity}/{k}")
            lines.append(f"{relative}\t{identity}\n")
    with open(os.path.join(root, "label.txt"), "w") as handle:
        handle.writelines(lines)


def read_set(directory):
    rows = [line.split("\t") for line in open(os.path.join(directory, "label.txt")).read().splitlines()]
    return [(open(os.path.join(directory, path)).read(), int(label)) for path, label in rows]


PARAMETERS = SplitParameters(num_clients=2, ids_per_client=3, veri_per_id=2, fl_min_images=4, fl_max_images=7,
                             num_public=4, public_min_images=2, public_max_images=6, seed=100)


def test_split_follows_the_protocol(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(2, 9, size=60).tolist()
    make_source(tmp_path / "src", counts)
    summary = split_dataset(str(tmp_path / "src"), str(tmp_path / "out"), PARAMETERS, log=lambda _: None)

    order = np.random.default_rng(100).permutation(60)
    first_half, second_half = order[:30].tolist(), order[30:].tolist()
    fl_ids = [i for i in first_half if 4 < counts[i] < 7][:6]
    public_ids = [i for i in second_half if 2 < counts[i] < 6][:4]

    public = read_set(tmp_path / "out" / "public")
    assert public == [(f"{identity}/{k}", label) for label, identity in enumerate(public_ids)
                      for k in range(counts[identity])]
    veri = read_set(tmp_path / "out" / "local_veri")
    assert veri == [(f"{identity}/{k}", label) for label, identity in enumerate(fl_ids) for k in range(2)]
    for client in range(2):
        directory = tmp_path / "out" / "clients" / f"client_{client:03d}"
        owned = fl_ids[3 * client: 3 * client + 3]
        assert read_set(directory) == [(f"{identity}/{k}", local) for local, identity in enumerate(owned)
                                       for k in range(2, counts[identity])]
        about = json.load(open(directory / "client.json"))
        assert about["first_veri_label"] == 3 * client and about["identities"] == 3
    assert summary["public"]["images"] == len(public)
    assert json.load(open(tmp_path / "out" / "split.json"))["parameters"]["seed"] == 100


def test_too_few_identities_is_one_error_before_writing(tmp_path, capsys):
    make_source(tmp_path / "src", [5] * 8)
    with pytest.raises(PlscError, match="too few identities for the federated part"):
        plan_split(np.repeat(np.arange(8), 5), PARAMETERS)
    with pytest.raises(SystemExit):
        main(["--source", str(tmp_path / "src"), "--out_dir", str(tmp_path / "out"), "--num_clients", "2",
              "--ids_per_client", "3", "--fl_min_images", "4", "--fl_max_images", "7"])
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("plsc.federated.split: error: too few identities")
    assert not (tmp_path / "out").exists()
