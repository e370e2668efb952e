"""Verification .bin files: both pickle generations load, bad structure and foreign code are refused."""
import io
import os
import pickle
import struct

import numpy as np
import pytest

from plsc.data.verification_bin import load_bin, write_bin
from plsc.errors import PlscError


def random_images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [b"\xff\xd8\xff" + rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
            for _ in range(count)]


def save(path, obj, protocol):
    with open(path, "wb") as handle:
        handle.write(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_write_then_load(tmp_path, protocol):
    images, issame = random_images(6), np.array([True, False, True])
    write_bin(tmp_path / "v.bin", images, issame, protocol=protocol)
    loaded_images, loaded_issame = load_bin(tmp_path / "v.bin")
    assert loaded_images == images
    assert loaded_issame.dtype == bool and loaded_issame.tolist() == [True, False, True]
    with open(tmp_path / "v.bin", "rb") as handle:  # the plain format: a tuple of two lists
        assert pickle.load(handle) == (images, [True, False, True])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_of_bytes_and_uint8_arrays(tmp_path, protocol):
    images = random_images(4, seed=1)
    bins = [np.frombuffer(images[0], np.uint8), images[1], np.frombuffer(images[2], np.uint8).copy(), images[3]]
    for issame in ([True, False], [np.bool_(True), np.bool_(False)], np.array([True, False])):
        path = save(tmp_path / "v.bin", (bins, issame), protocol)
        loaded_images, loaded_issame = load_bin(path)
        assert loaded_images == images and loaded_issame.tolist() == [True, False]


def short_binstring(data):
    """Python 2 pickles a `str` of < 256 bytes as SHORT_BINSTRING ('U', 1-byte length), else BINSTRING."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def test_hand_built_python2_protocol2_stream(tmp_path):
    images = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2, b"", b"\x00\xffabc"]
    stream = b"\x80\x02"                                   # PROTO 2
    stream += b"]q\x00("                                   # EMPTY_LIST, BINPUT 0, MARK
    stream += b"".join(short_binstring(image) for image in images)
    stream += b"e"                                         # APPENDS
    stream += b"]q\x01(\x88\x89e"                          # [True, False] as NEWTRUE / NEWFALSE
    stream += b"\x86q\x02."                                # TUPLE2, BINPUT 2, STOP
    path = tmp_path / "py2.bin"
    path.write_bytes(stream)
    with open(path, "rb") as handle:  # the stream really is what Python 2 str needs: bytes back
        assert pickle.load(handle, encoding="bytes") == (images, [True, False])
    loaded_images, loaded_issame = load_bin(path)
    assert loaded_images == images and loaded_issame.tolist() == [True, False]


class Python2StylePickler(pickle._Pickler):
    """Writes each str and bytes as a Python 2 `str` (SHORT_BINSTRING / BINSTRING), as old .bin files hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        self.write(short_binstring(data))
        self.memoize(obj)

    dispatch[str] = save_python2_str
    dispatch[bytes] = save_python2_str


def test_python2_numpy_array_pickle(tmp_path):
    images = random_images(2, seed=2)
    buffer = io.BytesIO()
    Python2StylePickler(buffer, protocol=2).dump(([np.frombuffer(image, np.uint8) for image in images], [True]))
    # numpy 1.x (and Python 2) named the module numpy.core.multiarray
    stream = buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in stream and b"_codecs" not in stream
    path = tmp_path / "py2_numpy.bin"
    path.write_bytes(stream)
    loaded_images, loaded_issame = load_bin(path)
    assert loaded_images == images and loaded_issame.tolist() == [True]


class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class CallsEval:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return eval, (self.source,)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_without_running(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payloads = [RunsShell(f"touch {marker}"), CallsEval(f"open({str(marker)!r}, 'w').close()")]
    for payload in payloads:
        # hidden among real images: refused while unpickling, before any structure check
        path = save(tmp_path / "evil.bin", ([b"\xff\xd8\xff", payload], [True]), protocol)
        refused = r"evil\.bin: refused to unpickle (posix|os|nt|builtins|__builtin__)\.(system|eval)"
        with pytest.raises(PlscError, match=refused):
            load_bin(path)
        assert not marker.exists()
    with open(path, "rb") as handle:  # the file would have run it
        pickle.load(handle)
    assert marker.exists()


@pytest.mark.parametrize("content, message", [
    ([b"a", b"b", [True]], r"expected a pickled \(bins, issame_list\) pair, got list"),
    ((b"ab", [True]), r"bins is bytes"),
    (([b"a", b"b", b"c"], [True]), r"bins holds 3 images, expected an even number"),
    (([b"a", b"b"], [True, False]), r"issame_list has 2 entries for 1 pairs"),
    (([b"a", b"b"], [1]), r"issame_list\[0\] is int, expected a bool"),
    (([b"a", 3], [True]), r"bins\[1\] is int"),
    (([b"a", b"b"], np.array([1], np.uint8)), r"issame_list is a uint8 array"),
    (([np.zeros(3, np.float32), b"b"], [True]), r"refused dtype 'f4'"),
    (([b"a", b"b"], {"issame": True}), r"refused to unpickle|issame_list is dict"),
    (([b"a", bytearray(b"b")], [True]), r"refused to unpickle (__builtin__|builtins)\.bytearray"),
])
def test_malformed_content_is_a_plsc_error(tmp_path, content, message):
    path = save(tmp_path / "bad.bin", content, 2)
    with pytest.raises(PlscError, match=r"bad\.bin: " + message):
        load_bin(path)


def test_truncated_or_non_pickle_file(tmp_path):
    good = pickle.dumps((random_images(2), [True]), protocol=4)
    (tmp_path / "cut.bin").write_bytes(good[: len(good) // 2])
    with pytest.raises(PlscError, match=r"cut\.bin: not a verification \.bin pickle"):
        load_bin(tmp_path / "cut.bin")
    (tmp_path / "text.bin").write_bytes(b"hello world")
    with pytest.raises(PlscError, match=r"text\.bin: not a verification \.bin pickle"):
        load_bin(tmp_path / "text.bin")
    with pytest.raises(PlscError, match=r"missing\.bin: no such file"):
        load_bin(tmp_path / "missing.bin")


def test_array_whose_shape_does_not_match_its_bytes(tmp_path):
    stream = pickle.dumps(([np.arange(4, dtype=np.uint8), b"b"], [True]), protocol=2)
    # shape (4,) -> (5,): numpy would read past the data; we refuse instead
    patched = stream.replace(b"K\x04\x85", b"K\x05\x85", 1)
    assert patched != stream
    (tmp_path / "shape.bin").write_bytes(patched)
    with pytest.raises(PlscError, match=r"shape\.bin: array of shape \(5,\) does not match its 4 data bytes"):
        load_bin(tmp_path / "shape.bin")


def test_write_bin_checks_pair_count(tmp_path):
    with pytest.raises(ValueError):
        write_bin(tmp_path / "x.bin", random_images(3), [True])
    assert not (tmp_path / "x.bin").exists()
