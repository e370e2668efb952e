"""Masked training faces: the masked fraction, reproducible draws, pre-masked copies (imgs -> masked rule,
masked_root, .rec), synthesis where no copy exists, the fallback count and its warning, the batch's third field."""
import logging
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from plsc.data import build_loader
from plsc.data.dataset.base import masked_draw, masked_draws
from plsc.data.dataset.face_identification import FaceIdentificationDataset, imgs_to_masked
from plsc.data.dataset.mx_record import MXRecordDataset
from plsc.data.mask import MASK_SHAPES, draw_style, paint_mask
from plsc.errors import PlscError
from tests.data.rec_builders import write_face_rec

DECODE = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}]
QUICKSTART = str(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml")
SIZE = 32
# Rows above the template's eye line (y 51.6 of 112, scaled to SIZE) that a painted mask never touches.
ABOVE_EYES = 12


def solid_png(colour, size=SIZE):
    """An RGB image of one colour, PNG-encoded (lossless): bytes."""
    image = np.full((size, size, 3), colour, dtype=np.uint8)
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def write_folder(root, relative_paths, colour=(200, 150, 100)):
    for path in relative_paths:
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "wb") as handle:
            handle.write(solid_png(colour))


def write_list(path, relative_paths):
    with open(path, "w") as handle:
        handle.writelines(f"{name}\t{position % 3}\n" for position, name in enumerate(relative_paths))


class Captured(logging.Handler):
    """The plsc logger's records during a test (the logger does not propagate once training set it up)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def plsc_log():
    logger = logging.getLogger("plsc")
    handler, level = Captured(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_masked_fraction_is_within_three_sigma_of_masked_ratio(tmp_path):
    names = [f"{i // 10}/{i}.png" for i in range(4000)]  # counting needs the list only, not the files
    write_list(tmp_path / "label.txt", names)
    for ratio in (0.1, 0.35):
        dataset = FaceIdentificationDataset(str(tmp_path), str(tmp_path / "label.txt"), DECODE, seed=11,
                                            masked_ratio=ratio)
        for epoch in (0, 1):
            counts = dataset.masked_counts(epoch)
            sigma = math.sqrt(4000 * ratio * (1 - ratio))
            assert abs(counts["masked"] - 4000 * ratio) < 3 * sigma, (ratio, epoch, counts)
            # Nothing was looked for (no `imgs` in the paths, no masked_root): every mask is painted.
            assert counts == {"samples": 4000, "masked": counts["masked"], "from_copy": 0,
                              "painted": counts["masked"], "missing_copy": 0}
    # The draws themselves: uniform on [0, 1) (mean 1/2, sd 1/sqrt(12)), independent of the next index.
    draws = masked_draws(3, 0, np.arange(4000))
    assert abs(draws.mean() - 0.5) < 3 * math.sqrt(1 / 12 / 4000)
    assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 3 / math.sqrt(4000)
    # The one-sample form a worker uses is the same number as the vectorised form the counts use.
    assert [masked_draw(3, 0, index) for index in range(0, 4000, 7)] == list(draws[::7])


def test_flags_follow_seed_epoch_and_index_and_match_the_counts(tmp_path):
    names = [f"{i % 4}/{i}.png" for i in range(60)]
    write_folder(tmp_path, names)
    write_list(tmp_path / "label.txt", names)
    make = lambda seed: FaceIdentificationDataset(str(tmp_path), str(tmp_path / "label.txt"),  # noqa: E731
                                                  DECODE, seed=seed, masked_ratio=0.3)
    dataset, twin, other_seed = make(5), make(5), make(6)
    flags = {}
    for epoch in (0, 1):
        for each in (dataset, twin, other_seed):
            each.set_epoch(epoch)
        samples = [dataset.read_sample(i) for i in range(60)]
        flags[epoch] = np.array([int(sample[2]) for sample in samples])
        assert all(sample[2].dtype == np.int64 for sample in samples)
        np.testing.assert_array_equal(flags[epoch], masked_draws(5, epoch, np.arange(60)) < 0.3)
        assert dataset.masked_counts()["masked"] == flags[epoch].sum()
        for index in range(60):  # same seed, epoch and index: the same flag and the same painted mask
            again = twin.read_sample(index)
            assert again[2] == flags[epoch][index]
            np.testing.assert_array_equal(again[0], samples[index][0])
        assert [int(other_seed.read_sample(i)[2]) for i in range(60)] != list(flags[epoch])
    assert not np.array_equal(flags[0], flags[1])
    # An unmasked read is the plain image; a masked one is painted below the eyes only.
    plain = cv2.cvtColor(cv2.imdecode(np.frombuffer(solid_png((200, 150, 100)), np.uint8), 1), cv2.COLOR_BGR2RGB)
    masked_index, plain_index = int(np.argmax(flags[1])), int(np.argmin(flags[1]))
    np.testing.assert_array_equal(dataset.read_sample(plain_index)[0], plain)
    painted = dataset.read_sample(masked_index)[0]
    np.testing.assert_array_equal(painted[:ABOVE_EYES], plain[:ABOVE_EYES])
    assert not np.array_equal(painted, plain)


def test_painted_mask_is_plscs_synthesis_with_the_sample_style_generator(tmp_path):
    names = ["0/a.png"]
    write_folder(tmp_path, names)
    write_list(tmp_path / "label.txt", names)
    dataset = FaceIdentificationDataset(str(tmp_path), str(tmp_path / "label.txt"), DECODE, seed=2, masked_ratio=1.0)
    image, _, is_masked = dataset.read_sample(0)
    style_rng = np.random.default_rng((2, 0, 0, 0x6D61736B))
    style_rng.random()  # RandomMask(prob=1) draws its yes/no first
    plain = np.full((SIZE, SIZE, 3), (200, 150, 100), dtype=np.uint8)
    assert is_masked == 1
    np.testing.assert_array_equal(image, paint_mask(plain, draw_style(style_rng, tuple(MASK_SHAPES))))


def test_loader_workers_give_the_same_batches_with_the_flag_as_third_field(tmp_path):
    names = [f"{i % 3}/{i}.png" for i in range(12)]
    write_folder(tmp_path, names)
    write_list(tmp_path / "label.txt", names)
    ops = DECODE + [{"ToCHWImage": None}]
    dataset = FaceIdentificationDataset(str(tmp_path), str(tmp_path / "label.txt"), ops, seed=1, masked_ratio=0.5)
    dataset.set_epoch(2)
    runs = []
    for workers in (0, 1):
        loader = build_loader(dataset, {"name": "BatchSampler", "batch_size": 5}, {"num_workers": workers})
        runs.append([[field.numpy() for field in batch] for batch in loader])
    for batch0, batch1 in zip(*runs):
        assert len(batch0) == 3 and batch0[2].dtype == np.int64
        for field0, field1 in zip(batch0, batch1):
            np.testing.assert_array_equal(field0, field1)
    flags = np.concatenate([batch[2] for batch in runs[0]])
    np.testing.assert_array_equal(flags, masked_draws(1, 2, np.arange(12)) < 0.5)
    # Without masked_ratio the third field is there, all zeros: the loop has one shape.
    plain = FaceIdentificationDataset(str(tmp_path), str(tmp_path / "label.txt"), ops)
    loader = build_loader(plain, {"name": "BatchSampler", "batch_size": 12}, {"num_workers": 0})
    (images, labels, is_masked), = list(loader)
    assert images.shape == [12, 3, SIZE, SIZE] and is_masked.numpy().tolist() == [0] * 12


def test_copy_by_the_imgs_to_masked_rule_and_the_missing_one_is_painted_and_counted(tmp_path, plsc_log):
    names = [f"{i}/x.png" for i in range(6)]
    write_folder(tmp_path / "data" / "imgs", names, colour=(200, 150, 100))
    write_folder(tmp_path / "data" / "masked", names[:5], colour=(10, 20, 30))  # the last copy is missing
    write_list(tmp_path / "label.txt", names)
    assert imgs_to_masked("/a/imgs/b/imgs/c.jpg") == "/a/imgs/b/masked/c.jpg"
    assert imgs_to_masked("/a/b/imgs.jpg") is None
    dataset = FaceIdentificationDataset(str(tmp_path / "data" / "imgs"), str(tmp_path / "label.txt"), DECODE,
                                        masked_ratio=1.0)
    warning, = [record for record in plsc_log if record.levelno == logging.WARNING]
    message = warning.getMessage()
    assert "5 have a pre-masked copy" in message and "1 have NO pre-masked copy" in message
    assert "5/x.png" in message and "\n" not in message
    assert dataset.masked_counts() == {"samples": 6, "masked": 6, "from_copy": 5, "painted": 1, "missing_copy": 1}
    for index in range(5):
        image, _, is_masked = dataset.read_sample(index)
        assert is_masked == 1 and (image == (10, 20, 30)).all()  # the copy, not the original
    image, _, is_masked = dataset.read_sample(5)
    assert is_masked == 1 and (image[:ABOVE_EYES] == (200, 150, 100)).all()
    assert not (image == (200, 150, 100)).all()  # painted over the original
    # A copy that cannot be read names the copy's file.
    with open(tmp_path / "data" / "masked" / "0" / "x.png", "wb") as handle:
        handle.write(b"not an image")
    with pytest.raises(PlscError, match=r"masked/0/x\.png \(pre-masked copy of .*label\.txt:1\): cannot decode"):
        dataset.read_sample(0)


def test_copy_under_masked_root(tmp_path, plsc_log):
    names = [f"{i}/x.png" for i in range(4)]
    write_folder(tmp_path / "faces", names)
    write_folder(tmp_path / "faces_masked", names, colour=(5, 250, 5))
    write_list(tmp_path / "label.txt", names)
    dataset = FaceIdentificationDataset(str(tmp_path / "faces"), str(tmp_path / "label.txt"), DECODE,
                                        masked_ratio=0.5, masked_root=str(tmp_path / "faces_masked"))
    assert not [record for record in plsc_log if record.levelno >= logging.WARNING]
    assert any("4 have a pre-masked copy, 0 are painted" in record.getMessage() for record in plsc_log)
    flags = masked_draws(0, 0, np.arange(4)) < 0.5
    assert 0 < flags.sum() < 4
    for index in range(4):
        image, _, is_masked = dataset.read_sample(index)
        assert is_masked == flags[index]
        assert (image == ((5, 250, 5) if flags[index] else (200, 150, 100))).all()
    counts = dataset.masked_counts()
    assert counts["masked"] == counts["from_copy"] == flags.sum() and counts["painted"] == 0


def test_rec_paints_masks_or_reads_a_masked_rec_of_the_same_keys(tmp_path, plsc_log):
    plain_bytes = [solid_png((200, 150, 100)) for _ in range(6)]
    keys, _ = write_face_rec(tmp_path / "rec", [3, 3], image_bytes=plain_bytes)
    dataset = MXRecordDataset(str(tmp_path / "rec"), DECODE, masked_ratio=1.0)
    assert dataset.masked_counts() == {"samples": 6, "masked": 6, "from_copy": 0, "painted": 6, "missing_copy": 0}
    for index in range(6):
        image, label, is_masked = dataset.read_sample(index)
        assert is_masked == 1 and label == index // 3
        assert (image[:ABOVE_EYES] == (200, 150, 100)).all() and not (image == (200, 150, 100)).all()
    # A pre-masked .rec holding the same keys but the last: five copies read, one painted and counted.
    write_face_rec(tmp_path / "masked", [3, 2], image_bytes=[solid_png((1, 2, 3))] * 5)
    dataset = MXRecordDataset(str(tmp_path / "rec"), DECODE, masked_ratio=1.0, masked_root=str(tmp_path / "masked"))
    assert dataset.masked_counts() == {"samples": 6, "masked": 6, "from_copy": 5, "painted": 1, "missing_copy": 1}
    assert any("1 have NO pre-masked copy" in r.getMessage() and f"key {keys[5]}" in r.getMessage()
               for r in plsc_log if r.levelno == logging.WARNING)
    assert all((dataset.read_sample(i)[0] == (1, 2, 3)).all() for i in range(5))
    assert (dataset.read_sample(5)[0][:ABOVE_EYES] == (200, 150, 100)).all()


def test_masking_settings_are_checked(tmp_path):
    names = ["0/a.png"]
    write_folder(tmp_path, names)
    write_list(tmp_path / "label.txt", names)
    label = str(tmp_path / "label.txt")
    with pytest.raises(PlscError, match=r"masked_ratio must be a number in \[0, 1\], got 1.5"):
        FaceIdentificationDataset(str(tmp_path), label, DECODE, masked_ratio=1.5)
    with pytest.raises(PlscError, match="masked_root is not a directory: .*nowhere"):
        FaceIdentificationDataset(str(tmp_path), label, DECODE, masked_ratio=0.1, masked_root=str(tmp_path / "nowhere"))
    with pytest.raises(PlscError, match="masked_ratio paints masks, which needs DecodeImage with to_rgb: True"):
        FaceIdentificationDataset(str(tmp_path), label, [{"DecodeImage": {"channel_first": True}}], masked_ratio=0.1)
    # Config text such as 1/10 is accepted, as for other float keys.
    assert FaceIdentificationDataset(str(tmp_path), label, DECODE, masked_ratio="1/10").masked_ratio == 0.1
    # Without masking nothing about the transform is required.
    FaceIdentificationDataset(str(tmp_path), label, [{"DecodeImage": {"channel_first": True}}])


def test_config_validates_the_new_keys():
    from plsc.config import load_config

    config = load_config(QUICKSTART, ["DataLoader.Train.dataset.masked_ratio=0.1",
                                                      "DataLoader.Train.dataset.masked_root=/data/masked",
                                                      "DataLoader.Eval.dataset.masked=per_image"])
    assert config.DataLoader.Train.dataset.masked_ratio == 0.1
    assert config.DataLoader.Eval.dataset.masked == "per_image"
    with pytest.raises(PlscError, match="did you mean DataLoader.Train.dataset.masked_ratio"):
        load_config(QUICKSTART, ["DataLoader.Train.dataset.masked_ration=0.1"])
