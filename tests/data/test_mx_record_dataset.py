"""MXRecordDataset: labels and images against a hand parse of the files, label sources, class checks, workers."""
import gc
import pickle
import warnings

import cv2
import numpy as np
import pytest

from plsc.data import build_dataset, build_loader
from plsc.data.dataset.mx_record import MXRecordDataset, labels_from_identity_ranges
from plsc.data.synthetic.formats import write_recordio
from plsc.errors import PlscError
from tests.data.rec_builders import parse_rec_by_hand, write_face_rec

DECODE_BGR = [{"DecodeImage": {"to_rgb": False, "channel_first": False}}]
TRAIN_OPS = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}, {"RandFlipImage": {"flip_code": 1}},
             {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.5] * 3, "std": [0.5] * 3, "order": ""}},
             {"ToCHWImage": None}]


def expected_samples(directory):
    """(labels, encoded images) of the image records, in key order, from the hand parse."""
    records = parse_rec_by_hand(directory)
    header = records.get(0)
    if header is not None and isinstance(header[0], tuple):
        image_keys = range(1, int(header[0][0]))  # record 0 labels [a, b]: images are keys 1 .. a-1
    else:
        image_keys = sorted(records)
    labels = [int(records[k][0][0]) if isinstance(records[k][0], tuple) else int(records[k][0]) for k in image_keys]
    return np.array(labels), [records[k][1] for k in image_keys]


@pytest.mark.parametrize("with_header", [True, False])
def test_labels_and_images_match_a_hand_parse(tmp_path, with_header):
    write_recordio(tmp_path, num_classes=3, images_per_class=3, seed=5, with_header=with_header)
    labels, encoded = expected_samples(tmp_path)
    dataset = MXRecordDataset(str(tmp_path), DECODE_BGR)
    assert len(dataset) == 9 and dataset.num_classes == 3
    np.testing.assert_array_equal(dataset.labels, labels)
    for index in range(len(dataset)):
        image, label, is_masked = dataset[index]
        assert label == labels[index] and label.dtype == np.int64
        assert is_masked == 0 and is_masked.dtype == np.int64
        np.testing.assert_array_equal(image, cv2.imdecode(np.frombuffer(encoded[index], np.uint8), cv2.IMREAD_COLOR))
    assert dataset.label_source == ("the identity records" if with_header else "the image headers at start-up")


def test_flip_follows_the_per_sample_generator_like_the_folder_dataset(tmp_path):
    write_recordio(tmp_path, num_classes=2, images_per_class=4, seed=1)
    _, encoded = expected_samples(tmp_path)
    dataset = MXRecordDataset(str(tmp_path), TRAIN_OPS, seed=3)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(encoded[index], np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB)
            if np.random.default_rng((3, epoch, index)).random() < 0.5:
                rgb = rgb[:, ::-1]
            expected = ((rgb.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)
            np.testing.assert_allclose(dataset[index][0], expected, atol=1e-6)


def brute_force_labels(ranges, first_key, num_images):
    labels = [None] * num_images
    for identity, (start, end) in enumerate(ranges):
        for key in range(start, end):
            assert labels[key - first_key] is None
            labels[key - first_key] = identity
    return labels


def test_labels_from_identity_ranges_against_a_loop():
    rng = np.random.default_rng(0)
    sizes = rng.integers(0, 5, size=30)
    starts = 1 + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ranges = np.stack([starts, starts + sizes], axis=1)
    # Identities listed out of key order still own exactly their ranges.
    shuffled = ranges[rng.permutation(len(ranges))]
    for table in (ranges, shuffled):
        expected = brute_force_labels(table, 1, int(sizes.sum()))
        np.testing.assert_array_equal(labels_from_identity_ranges(table, 1, int(sizes.sum())), expected)


@pytest.mark.parametrize("ranges, message", [
    ([[1, 3], [2, 5]], "image key 2 is listed by identities 0 and 1"),
    ([[1, 3], [4, 5]], "image key 3 belongs to no identity"),
    ([[1, 3], [3, 6]], "identity 1 has image keys [3, 6), not within the image keys [1, 5)"),
    ([[1, 3], [4, 3]], "identity 1 has image keys [4, 3)"),
])
def test_inconsistent_identity_ranges(ranges, message):
    with pytest.raises(PlscError, match=message.replace("[", r"\[").replace(")", r"\)")):
        labels_from_identity_ranges(ranges, 1, 4)


def test_identity_records_out_of_class_order_fall_back_to_image_headers(tmp_path):
    # Identity record i lists class 2 - i: the spot check sees it and the headers decide.
    keys, header_labels = write_face_rec(tmp_path, [2, 3, 1], identity_order=[2, 1, 0])
    with pytest.warns(UserWarning, match="not in class order"):
        dataset = MXRecordDataset(str(tmp_path), DECODE_BGR)
    np.testing.assert_array_equal(dataset.labels, header_labels)
    assert [int(dataset[i][1]) for i in range(len(dataset))] == list(header_labels)


def test_header_label_disagreeing_with_its_identity_record_is_an_error_not_a_wrong_label(tmp_path):
    # Six identities; the start-up spot check reads the first image of identities 0, 2, 3 and 5,
    # so the second image of identity 1 carrying class 4 is only found when it is read.
    sizes = [2, 2, 2, 2, 2, 2]
    header_labels = np.repeat(np.arange(6), 2)
    header_labels[3] = 4
    keys, _ = write_face_rec(tmp_path, sizes, header_labels=header_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dataset = MXRecordDataset(str(tmp_path), DECODE_BGR)
    assert dataset[2][1] == 1
    with pytest.raises(PlscError) as error:
        dataset.read_sample(3)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'train.rec'} key {keys[3]}: ")
    assert "header says class 4" in message and "identity records give class 1" in message


def test_check_labels_against_property_and_label_range(tmp_path):
    with_property, without_property = tmp_path / "a", tmp_path / "b"
    write_face_rec(with_property, [2, 2, 2], property_classes=3)
    write_face_rec(without_property, [2, 2, 2], with_header=False)
    MXRecordDataset(str(with_property)).check_labels(3)
    for class_num in (2, 4):
        with pytest.raises(PlscError, match=f"property: the dataset has 3 classes but Model.class_num is {class_num}"):
            MXRecordDataset(str(with_property)).check_labels(class_num)
    dataset = MXRecordDataset(str(without_property))
    dataset.check_labels(3)
    dataset.check_labels(5)  # no property: only labels outside [0, class_num) are wrong
    with pytest.raises(PlscError, match=r"train.rec key 4: label 2 is outside \[0, Model.class_num=2\)"):
        dataset.check_labels(2)


def test_pickles_without_a_file_handle_and_workers_read_the_same_samples(tmp_path):
    write_recordio(tmp_path, num_classes=3, images_per_class=4, seed=2)
    dataset = MXRecordDataset(str(tmp_path), TRAIN_OPS, seed=9)
    reader = dataset.records.reader
    assert reader._handle is None  # start-up reads done, nothing left open
    dataset[0]
    assert reader._handle is not None
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.records.reader._handle is None
    np.testing.assert_array_equal(copy[5][0], dataset[5][0])

    def batches(num_workers):
        loader = build_loader(dataset, {"name": "BatchSampler", "batch_size": 5}, {"num_workers": num_workers})
        return [(images.numpy(), labels.numpy()) for images, labels, _ in loader]

    sequential = batches(0)
    # Paddle 3.3 can deadlock a worker forked while the finished num_workers=0 iterator awaits
    # garbage collection (docs/bench_data.md); collect it before the workers start.
    gc.collect()
    parallel = batches(2)
    assert len(sequential) == len(parallel) == 3
    for (images_a, labels_a), (images_b, labels_b) in zip(sequential, parallel):
        np.testing.assert_array_equal(labels_a, labels_b)
        np.testing.assert_array_equal(images_a, images_b)


def test_built_from_a_config_section_by_name(tmp_path):
    write_recordio(tmp_path, num_classes=2, images_per_class=2, seed=0)
    dataset = build_dataset({"name": "MXRecordDataset", "root_dir": str(tmp_path), "transform_ops": TRAIN_OPS},
                            "DataLoader.Train.dataset", seed=4)
    assert isinstance(dataset, MXRecordDataset) and dataset.seed == 4 and len(dataset) == 4
    with pytest.raises(PlscError, match="root_dir is not a directory"):
        MXRecordDataset(str(tmp_path / "missing"))
