"""Synthetic face masks: lower face only, deterministic, the RandomMask op and one-side-masked pairs."""
import cv2
import numpy as np
import pytest

from plsc.data.dataset.face_verification import FaceVerificationDataset
from plsc.data.mask import (MASK_SHAPES, MaskStyle, OneSideMaskedPairs, RandomMask, draw_style, paint_mask,
                            split_after_decode)
from plsc.data.transforms import build_transforms
from plsc.data.verification_bin import write_bin
from plsc.errors import PlscError

# The ArcFace template's eyes are at y = 51.7 / 51.5 and its mouth corners at y = 92.4 / 92.2
# (insightface's arcface_dst), written out here rather than taken from the code under test.
EYE_Y_112 = 51.6963
MOUTH = [(41.5493, 92.3655), (70.7299, 92.2041)]


def noise_image(size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def all_styles():
    rng = np.random.default_rng(7)
    styles = [draw_style(rng, tuple(MASK_SHAPES)) for _ in range(60)]
    # The extremes of coverage for every shape: highest top edge, widest, deepest.
    for shape in MASK_SHAPES:
        styles.append(MaskStyle(shape, 0.35, 2.0, 1.2, 1.1, (20.0, 200.0, 90.0), 0.25))
    return styles


@pytest.mark.parametrize("size", [112, 64, 160])
def test_pixels_above_the_eye_line_are_unchanged(size):
    image = noise_image(size)
    eye_row = int(np.floor(EYE_Y_112 * size / 112))
    for style in all_styles():
        masked = paint_mask(image, style)
        assert np.array_equal(masked[:eye_row + 1], image[:eye_row + 1]), style
        assert not np.array_equal(masked, image)


def test_mask_covers_mouth_and_chin_with_its_colour():
    image = noise_image(112, seed=1)
    colour = (20.0, 200.0, 90.0)
    for shape in MASK_SHAPES:
        style = MaskStyle(shape, 0.5, 4.0, 1.05, 0.9, colour, 0.0)
        masked = paint_mask(image, style).astype(np.float64)
        # Every pixel of the mouth (its corners and around) and of the philtrum shows the fabric:
        # the mask colour, at most 10% darker where surgical pleats shade it. Noise pixels would not.
        (left_x, left_y), (right_x, right_y) = MOUTH
        mouth = masked[int(left_y) - 4:int(right_y) + 5, int(left_x) + 2:int(right_x) - 1]
        philtrum = masked[80:86, 52:60]
        for region in (mouth, philtrum):
            assert np.all(np.abs(region - colour) <= 0.1 * np.array(colour) + 2.0), shape
        # The forehead and the eyes are not.
        assert np.array_equal(masked[:50].astype(np.uint8), image[:50])


def test_paint_mask_is_a_pure_function_of_its_style_and_leaves_the_input_alone():
    image = noise_image(112, seed=2)
    original = image.copy()
    style = draw_style(np.random.default_rng(3), ("kn95",))
    first, second = paint_mask(image, style), paint_mask(image, style)
    assert np.array_equal(first, second)
    assert np.array_equal(image, original)
    assert first.dtype == np.uint8 and first.shape == image.shape


def test_draw_style_jitters_shape_colour_and_coverage():
    rng = np.random.default_rng(0)
    styles = [draw_style(rng, tuple(MASK_SHAPES)) for _ in range(200)]
    assert {style.shape for style in styles} == set(MASK_SHAPES)
    assert len({style.colour for style in styles}) == 200
    tops = [style.top_fraction for style in styles]
    assert max(tops) - min(tops) > 0.3


def test_chw_or_float_images_are_refused():
    with pytest.raises(PlscError, match="HWC"):
        paint_mask(noise_image(112).transpose(2, 0, 1), draw_style(np.random.default_rng(0), ("cloth",)))
    with pytest.raises(PlscError, match="uint8"):
        paint_mask(noise_image(112).astype(np.float32), draw_style(np.random.default_rng(0), ("cloth",)))


def test_random_mask_op_from_config_follows_its_probability():
    image = noise_image(112, seed=4)
    data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    pipeline = build_transforms([{"DecodeImage": {"to_rgb": True, "channel_first": False}},
                                 {"RandomMask": {"prob": 0.3, "shapes": ["surgical", "cloth"]}}])
    changed = 0
    for seed in range(200):
        out = pipeline(data, np.random.default_rng(seed))
        applied = np.random.default_rng(seed).random() < 0.3
        assert (not np.array_equal(out, image)) == applied
        changed += applied
    assert 40 <= changed <= 80
    assert np.array_equal(RandomMask(prob=0.0)(image, np.random.default_rng(0)), image)


def test_random_mask_rejects_bad_settings():
    with pytest.raises(PlscError, match="unknown mask shape"):
        RandomMask(shapes=["scarf"])
    with pytest.raises(PlscError, match="prob"):
        RandomMask(prob=1.5)


def write_pair_bin(path, num_pairs, seed=0):
    rng = np.random.default_rng(seed)
    images = [noise_image(112, seed=int(rng.integers(1 << 30))) for _ in range(2 * num_pairs)]
    encoded = [cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes() for image in images]
    write_bin(str(path), encoded, [k % 2 == 0 for k in range(num_pairs)])
    return images


def test_one_side_masked_pairs_mask_exactly_one_image_per_pair(tmp_path):
    images = write_pair_bin(tmp_path / "pairs.bin", 12)
    pairs = FaceVerificationDataset(bin_path=str(tmp_path / "pairs.bin"),
                                    transform_ops=[{"DecodeImage": {"to_rgb": True, "channel_first": False}}])
    masked = OneSideMaskedPairs(pairs, seed=5)
    sides = []
    for pair in range(12):
        changed = [not np.array_equal(masked[2 * pair + side][0], images[2 * pair + side]) for side in (0, 1)]
        assert sum(changed) == 1
        sides.append(changed.index(True))
        # The masked image keeps everything above the eye line.
        image = masked[2 * pair + sides[-1]][0]
        assert np.array_equal(image[:52], images[2 * pair + sides[-1]][:52])
    assert 0 < sum(sides) < 12  # both sides get masks, chosen per pair
    again = OneSideMaskedPairs(pairs, seed=5)
    assert all(np.array_equal(again[k][0], masked[k][0]) for k in range(24))
    other = OneSideMaskedPairs(pairs, seed=6)
    assert any(not np.array_equal(other[k][0], masked[k][0]) for k in range(24))


def test_masked_pairs_paint_before_the_rest_of_the_pipeline(tmp_path):
    write_pair_bin(tmp_path / "pairs.bin", 2)
    ops = [{"DecodeImage": {"to_rgb": True, "channel_first": False}}, {"ResizeImage": {"size": 56}},
           {"NormalizeImage": {"scale": 1.0 / 255, "mean": [0.5] * 3, "std": [0.5] * 3, "order": ""}},
           {"ToCHWImage": None}]
    pairs = FaceVerificationDataset(bin_path=str(tmp_path / "pairs.bin"), transform_ops=ops)
    masked = OneSideMaskedPairs(pairs, seed=0)
    side, style = masked.masked_side(0)
    decoded = build_transforms(ops[:1])(pairs.read_bytes(side), None)
    expected = build_transforms(ops[1:])(paint_mask(decoded, style), None)
    image, label, is_masked = masked[side]
    assert image.shape == (3, 56, 56)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert label == pairs.labels[side]
    assert is_masked == 1 and masked[1 - side][2] == 0  # the flag marks the painted image
    np.testing.assert_array_equal(masked.masked_flags()[:2], [side == 0, side == 1])


def test_split_after_decode_needs_a_decode_op():
    with pytest.raises(PlscError, match="DecodeImage"):
        split_after_decode(build_transforms([{"ResizeImage": {"size": 56}}]))
    with pytest.raises(PlscError, match="channel_first"):
        split_after_decode(build_transforms([{"DecodeImage": {"channel_first": True}}]))
