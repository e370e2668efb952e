"""Masked-aware verification: which is_masked flag a backbone receives for each set kind, the per_image
split into pairs with / without a masked face (against an independent computation), and plsc-eval's lines."""
import os

import cv2
import numpy as np
import paddle
import pytest

from plsc.config.tree import Config
from plsc.data.dataset.face_verification import FaceVerificationDataset
from plsc.data.verification_bin import write_bin
from plsc.engine import evaluate as evaluate_module
from plsc.engine.evaluator import VerificationEvaluator, format_figures
from plsc.errors import PlscError
from plsc.metrics.verification import LFWAcc

NUM_PAIRS = 40
OPS = [{"DecodeImage": {"to_rgb": True, "channel_first": False}},
       {"NormalizeImage": {"scale": 1.0 / 255, "mean": [0.5] * 3, "std": [0.5] * 3, "order": ""}},
       {"ToCHWImage": None}]
BATCH = 16


class FlagRecorder(paddle.nn.Layer):
    """A FaceT-like backbone stub: takes the flag, records it, embeds an image as its mean colour [N, 3]."""

    side_inputs = ("is_masked",)

    def __init__(self):
        super().__init__()
        self.received = []

    def forward(self, images, is_masked=None):
        self.received.append(None if is_masked is None else is_masked.numpy().copy())
        return images.mean(axis=[2, 3])


class ImagesOnly(paddle.nn.Layer):
    """A backbone that takes images alone (a flag passed to it would be a TypeError)."""

    def forward(self, images):
        return images.mean(axis=[2, 3])


def pair_colours(seed=0):
    """Colours [2P, 3] uint8, issame [P] and per-image flags [2P]: even pairs have one masked face and a
    noisier match (harder), odd pairs none; same / different alternate every two pairs, so each subset holds both."""
    rng = np.random.default_rng(seed)
    colours, issame, flags = [], [], []
    for pair in range(NUM_PAIRS):
        same = (pair // 2) % 2 == 0
        has_mask = pair % 2 == 0
        first = rng.integers(20, 236, 3)
        second = first + rng.normal(0, 60 if has_mask else 8, 3) if same else rng.integers(20, 236, 3)
        colours += [first, np.clip(second, 0, 255)]
        issame.append(same)
        flags += [0, 1] if has_mask and pair % 4 == 0 else ([1, 0] if has_mask else [0, 0])
    return np.round(colours).astype(np.uint8), np.array(issame), np.array(flags, dtype=np.int64)


def png(colour):
    image = np.full((8, 8, 3), colour, dtype=np.uint8)
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def write_folder_set(directory, colours, issame, flags=None):
    """A pair folder; with flags, the list has the masked1 / masked2 columns."""
    os.makedirs(directory, exist_ok=True)
    lines = []
    for pair in range(len(issame)):
        names = [f"{pair}_{side}.png" for side in (0, 1)]
        for side, name in enumerate(names):
            with open(os.path.join(directory, name), "wb") as handle:
                handle.write(png(colours[2 * pair + side]))
        extra = "" if flags is None else f"\t{flags[2 * pair]}\t{flags[2 * pair + 1]}"
        lines.append(f"{names[0]}\t{names[1]}\t{int(issame[pair])}{extra}\n")
    with open(os.path.join(directory, "pairs.txt"), "w") as handle:
        handle.writelines(lines)
    return os.path.join(directory, "pairs.txt")


@pytest.fixture(scope="module")
def pair_sets(tmp_path_factory):
    """{kind: dataset} over the same pairs: per_image from a five-column folder list and from a .bin with
    its sidecar, masked (every image flagged), holistic."""
    root = tmp_path_factory.mktemp("masked_eval")
    colours, issame, flags = pair_colours()
    folder_list = write_folder_set(root / "folder", colours, issame, flags)
    plain_list = write_folder_set(root / "plain", colours, issame)
    write_bin(root / "pairs.bin", [png(c) for c in colours], issame)
    np.save(root / "pairs.masked.npy", flags)
    sets = {
        "folder_per_image": FaceVerificationDataset(str(root / "folder"), folder_list, OPS, set_name="folder_per_image",
                                                    masked="per_image"),
        "bin_per_image": FaceVerificationDataset(bin_path=str(root / "pairs.bin"), transform_ops=OPS,
                                                 set_name="bin_per_image", masked="per_image"),
        "all_masked": FaceVerificationDataset(str(root / "plain"), plain_list, OPS, set_name="all_masked", masked=True),
        "holistic": FaceVerificationDataset(str(root / "plain"), plain_list, OPS, set_name="holistic"),
    }
    return sets, colours, issame, flags, root


def expected_embeddings(colours):
    """Mean normalised colour of each image, doubled (image + mirror of a solid image): float [2P, 3]."""
    return 2.0 * (colours.astype(np.float64) / 255.0 - 0.5) / 0.5


def test_each_kind_passes_its_flags_with_the_mirror_too(pair_sets):
    sets, _, _, flags, _ = pair_sets
    expected = {"folder_per_image": flags, "bin_per_image": flags,
                "all_masked": np.ones(2 * NUM_PAIRS, np.int64), "holistic": np.zeros(2 * NUM_PAIRS, np.int64)}
    for name, dataset in sets.items():
        np.testing.assert_array_equal(dataset.image_masked, expected[name])
        backbone = FlagRecorder()
        VerificationEvaluator([dataset], [LFWAcc(flip_test=True)], batch_size=BATCH).evaluate(backbone)
        calls = backbone.received
        assert len(calls) == 2 * -(-2 * NUM_PAIRS // BATCH)  # image and mirror for every batch
        for image_call, mirror_call in zip(calls[0::2], calls[1::2]):
            assert image_call.dtype == np.int64
            np.testing.assert_array_equal(mirror_call, image_call)
        np.testing.assert_array_equal(np.concatenate(calls[0::2]), expected[name], err_msg=name)


def test_results_name_the_kind_and_split_per_image_sets(pair_sets):
    sets, colours, issame, flags, _ = pair_sets
    evaluator = VerificationEvaluator(list(sets.values()), [LFWAcc(flip_test=True)], batch_size=BATCH)
    results = evaluator.evaluate(FlagRecorder())
    assert {name: figures["kind"] for name, figures in results.items()} == {
        "folder_per_image": "per_image", "bin_per_image": "per_image", "all_masked": "masked", "holistic": "holistic"}

    # Independent figures: numpy embeddings, pairs chosen by their flags here.
    embeddings = expected_embeddings(colours)
    whole = LFWAcc()(embeddings, issame)
    pair_has_mask = flags.reshape(-1, 2).max(axis=1) > 0
    split = {}
    for prefix, chosen in (("masked", pair_has_mask), ("unmasked", ~pair_has_mask)):
        pairs = np.flatnonzero(chosen)
        rows = np.ravel(np.column_stack([2 * pairs, 2 * pairs + 1]))
        split[prefix] = (LFWAcc()(embeddings[rows], issame[pairs])["accuracy"], pairs.size)
    assert split["masked"][1] == split["unmasked"][1] == NUM_PAIRS // 2
    assert split["unmasked"][0] == 1.0 and split["masked"][0] < 1.0  # the noisier matches cost accuracy

    for name, figures in results.items():
        for key in ("accuracy", "std", "threshold", "metric"):
            assert figures[key] == pytest.approx(whole[key], abs=1e-6), (name, key)
        # xnorm is insightface's, over single images; this stub embeds an image and its mirror alike,
        # so it is half the norm of their sum.
        assert figures["xnorm"] == pytest.approx(whole["xnorm"] / 2, rel=1e-5)
        assert figures["best"] == figures["metric"]
        if figures["kind"] == "per_image":
            assert figures["masked_pairs_accuracy"] == pytest.approx(split["masked"][0], abs=1e-6)
            assert figures["unmasked_pairs_accuracy"] == pytest.approx(split["unmasked"][0], abs=1e-6)
            assert (figures["masked_pairs"], figures["unmasked_pairs"]) == (20, 20)
        else:
            assert "masked_pairs_accuracy" not in figures

    line = format_figures("folder_per_image", results["folder_per_image"])
    assert line.startswith(f"folder_per_image (per_image): accuracy {whole['accuracy']:.5f}")
    assert (f"pairs with a masked face {split['masked'][0]:.5f} (20), without {split['unmasked'][0]:.5f} (20)"
            in line)
    assert format_figures("holistic", results["holistic"]).startswith("holistic (holistic): accuracy")


def test_a_backbone_without_side_inputs_gets_images_only(pair_sets):
    sets, _, _, _, _ = pair_sets
    datasets = [sets["folder_per_image"], sets["all_masked"]]
    plain = VerificationEvaluator(datasets, [LFWAcc(flip_test=True)], batch_size=BATCH).evaluate(ImagesOnly())
    flagged = VerificationEvaluator(datasets, [LFWAcc(flip_test=True)], batch_size=BATCH).evaluate(FlagRecorder())
    assert plain.keys() == flagged.keys()
    for name in plain:
        for key, value in flagged[name].items():
            assert plain[name][key] == (value if isinstance(value, str) else pytest.approx(value)), key


def test_plsc_eval_prints_kind_and_both_accuracies(pair_sets, monkeypatch, capsys, tmp_path):
    sets, _, _, _, root = pair_sets
    datasets = [sets["holistic"], sets["folder_per_image"]]
    monkeypatch.setattr(evaluate_module, "build_backbone", lambda model: FlagRecorder())
    monkeypatch.setattr(evaluate_module, "load_backbone_state", lambda backbone, state, path: None)
    monkeypatch.setattr(evaluate_module, "build_evaluator",
                        lambda config: VerificationEvaluator(datasets, [LFWAcc()], batch_size=BATCH))
    paddle.save({}, str(tmp_path / "model.pdparams"))
    config = Config({"Global": {"device": "cpu", "pretrained_model": str(tmp_path / "model"),
                                "output_dir": str(tmp_path)}, "Model": {"name": "Stub"}})
    results = evaluate_module.evaluate_saved_model(config)
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("plot: ")]
    assert printed[0].startswith("holistic (holistic): accuracy ")
    assert printed[1].startswith("folder_per_image (per_image): accuracy ")
    assert "pairs with a masked face " in printed[1] and ", without " in printed[1]
    # The returned figures are numbers only (plsc-eval prints each with a number format).
    assert all(isinstance(value, (int, float)) for figures in results.values() for value in figures.values())
    assert {"accuracy", "std", "threshold", "xnorm", "metric",
            "masked_pairs_accuracy"} <= set(results["folder_per_image"])


def test_per_image_needs_the_flags_of_each_image(tmp_path):
    colours, issame, flags = pair_colours()
    plain_list = write_folder_set(tmp_path / "plain", colours[:8], issame[:4])
    with pytest.raises(PlscError, match=r"pairs\.txt: masked: per_image needs .*pairs\.masked\.npy"):
        FaceVerificationDataset(str(tmp_path / "plain"), plain_list, OPS, masked="per_image")
    np.save(tmp_path / "plain" / "pairs.masked.npy", flags[:6])
    with pytest.raises(PlscError, match=r"pairs\.masked\.npy: expected 8 flags of 0/1"):
        FaceVerificationDataset(str(tmp_path / "plain"), plain_list, OPS, masked="per_image")
    np.save(tmp_path / "plain" / "pairs.masked.npy", flags[:8])
    sidecar = FaceVerificationDataset(str(tmp_path / "plain"), plain_list, OPS, masked="per_image")
    np.testing.assert_array_equal(sidecar.image_masked, flags[:8])
    assert [int(sidecar[i][2]) for i in range(8)] == list(flags[:8])
    with pytest.raises(PlscError, match="masked must be False, True, 'per_image' or 'painted', got 'yes'"):
        FaceVerificationDataset(str(tmp_path / "plain"), plain_list, OPS, masked="yes")
    with open(tmp_path / "bad.txt", "w") as handle:
        handle.write("1_0.png\t1_1.png\t0\t0\t0\n0_0.png\t0_1.png\t1\t0\t2\n")
    with pytest.raises(PlscError, match=r"bad\.txt:2: masked flag '2' is not 0 or 1"):
        FaceVerificationDataset(str(tmp_path / "plain"), str(tmp_path / "bad.txt"), OPS, masked="per_image")
    with open(tmp_path / "mixed.txt", "w") as handle:
        handle.write("0_0.png\t0_1.png\t1\t0\t1\n1_0.png\t1_1.png\t0\n")
    with pytest.raises(PlscError, match=r"mixed\.txt:2: expected 5 fields"):
        FaceVerificationDataset(str(tmp_path / "plain"), str(tmp_path / "mixed.txt"), OPS, masked="per_image")
