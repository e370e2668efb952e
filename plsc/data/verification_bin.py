"""LFW-style verification `.bin` files (lfw.bin, cfp_fp.bin, agedb_30.bin): safe loading and writing.

A `.bin` is a pickle of `(bins, issame_list)`: 2*P encoded images (bytes, or uint8 arrays) where
images 2k and 2k+1 form pair k, and P booleans. Unpickling can run arbitrary code, so `load_bin`
uses an unpickler that resolves only the few globals this format needs, each replaced by a small
function of ours that checks its arguments: numpy's own `__setstate__` never sees file data.
"""
import os
import pickle

import numpy as np

from plsc.errors import PlscError

# Image arrays are uint8; issame may come as a numpy bool array or numpy bool scalars.
_ALLOWED_DTYPES = {"u1": np.dtype(np.uint8), "|u1": np.dtype(np.uint8), "uint8": np.dtype(np.uint8),
                   "b1": np.dtype(np.bool_), "|b1": np.dtype(np.bool_), "bool": np.dtype(np.bool_)}


class _UnpicklingRefused(Exception):
    """Raised inside the unpickler; `load_bin` turns it into a PlscError naming the file."""


def _as_text(value):
    """Python 2 `str` arrives as bytes under encoding='bytes'; names are ASCII either way."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


class _NdarrayType:
    """Stands in for `numpy.ndarray` in the stream: only `_reconstruct_array` accepts it, nothing can call it."""


_NDARRAY_TYPE = _NdarrayType()


class _PickledDtype:
    """A dtype named in the stream, limited to uint8 / bool; its pickled state is checked, not applied."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        # numpy writes (version, byteorder, subarray, names, fields, elsize, alignment, flags);
        # a plain uint8/bool dtype has no subarray, names or fields.
        if not isinstance(state, tuple) or len(state) < 5 or any(part is not None for part in state[2:5]):
            raise _UnpicklingRefused(f"unsupported state for dtype {self.dtype}")


class _PickledArray:
    """An ndarray being rebuilt from (version, shape, dtype, is_fortran, raw bytes); holds the result."""

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) != 5:
            raise _UnpicklingRefused("unsupported ndarray state")
        _, shape, dtype, is_fortran, raw = state
        self.array = _array_from_raw(raw, dtype, shape, "F" if is_fortran else "C")


def _array_from_raw(raw, dtype, shape, order):
    """Raw bytes -> a new uint8/bool array of `shape`, checking the byte count first."""
    if not isinstance(dtype, _PickledDtype):
        raise _UnpicklingRefused("array dtype was not built by numpy.dtype")
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, bytearray)):
        raise _UnpicklingRefused("array data is not raw bytes")
    if not isinstance(shape, tuple) or not all(isinstance(size, int) and size >= 0 for size in shape):
        raise _UnpicklingRefused(f"bad array shape {shape!r}")
    if int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize != len(raw):
        raise _UnpicklingRefused(f"array of shape {shape} does not match its {len(raw)} data bytes")
    return np.frombuffer(bytes(raw), dtype=dtype.dtype).reshape(shape, order=_as_text(order)).copy()


def _reconstruct_array(subtype, shape, typecode):
    """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array whose BUILD state follows."""
    if subtype is not _NDARRAY_TYPE:
        raise _UnpicklingRefused("_reconstruct called for something other than numpy.ndarray")
    return _PickledArray()


def _array_from_buffer(buffer, dtype, shape, order):
    """numpy's `_frombuffer` (pickle protocol 5 with in-band buffers)."""
    return _array_from_raw(bytes(buffer), dtype, tuple(shape), order)


def _numpy_scalar(dtype, raw):
    """numpy's `scalar(dtype, raw bytes)`, e.g. an `np.bool_` in issame_list."""
    return _array_from_raw(raw, dtype, (), "C")[()]


def _numpy_dtype(spec, align=False, copy=False):
    """numpy's `dtype('u1', False, True)`, limited to uint8 and bool."""
    dtype = _ALLOWED_DTYPES.get(_as_text(spec)) if isinstance(spec, (str, bytes)) else None
    if dtype is None:
        raise _UnpicklingRefused(f"refused dtype {spec!r} (only uint8 and bool)")
    return _PickledDtype(dtype)


def _latin1_encode(text, encoding="utf-8"):
    """`_codecs.encode(str, 'latin1')`: how protocol-2 pickles from Python 3 spell non-empty bytes."""
    if not isinstance(text, str) or _as_text(encoding).lower().replace("-", "") != "latin1":
        raise _UnpicklingRefused(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


def _empty_bytes(*args):
    """`bytes()`: how protocol-2 pickles from Python 3 spell b''."""
    if args:
        raise _UnpicklingRefused("refused bytes() with arguments")
    return b""


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_array,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy", "ndarray"): _NDARRAY_TYPE,
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _empty_bytes,
    ("__builtin__", "bytes"): _empty_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of `_ALLOWED_GLOBALS`; any other name stops loading before it is called."""

    def find_class(self, module, name):
        replacement = _ALLOWED_GLOBALS.get((_as_text(module), _as_text(name)))
        if replacement is None:
            raise _UnpicklingRefused(f"refused to unpickle {_as_text(module)}.{_as_text(name)}")
        return replacement

    def persistent_load(self, pid):
        raise _UnpicklingRefused("refused a persistent id")


def _restricted_load(handle):
    """Unpickle from an open binary file with the restricted unpickler; Python 2 `str` becomes bytes."""
    return RestrictedUnpickler(handle, encoding="bytes").load()


def _image_bytes(item, index, path):
    """One entry of `bins` -> encoded image bytes."""
    if isinstance(item, _PickledArray):
        item = item.array
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise PlscError(f"{path}: bins[{index}] is {type(item).__name__}, "
                    f"expected encoded image bytes or a uint8 array")


def _issame_array(issame_list, num_pairs, path):
    """issame_list (list of bools, or a bool array) -> bool [P]."""
    if isinstance(issame_list, _PickledArray):
        issame_list = issame_list.array
    if isinstance(issame_list, np.ndarray):
        if issame_list.dtype != np.bool_ or issame_list.ndim != 1:
            raise PlscError(f"{path}: issame_list is a {issame_list.dtype} array of shape "
                            f"{issame_list.shape}, expected bools")
        entries = issame_list
    elif isinstance(issame_list, (list, tuple)):
        for index, value in enumerate(issame_list):
            if not isinstance(value, (bool, np.bool_)):
                raise PlscError(f"{path}: issame_list[{index}] is {type(value).__name__}, expected a bool")
        entries = issame_list
    else:
        raise PlscError(f"{path}: issame_list is {type(issame_list).__name__}, expected a list of bools")
    if len(entries) != num_pairs:
        raise PlscError(f"{path}: issame_list has {len(entries)} entries for {num_pairs} pairs")
    return np.array(entries, dtype=bool).reshape(num_pairs)


def load_bin(path):
    """Read a verification `.bin` -> (2*P encoded images as bytes, issame bool [P])."""
    path = str(path)
    if not os.path.isfile(path):
        raise PlscError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            content = _restricted_load(handle)
    except _UnpicklingRefused as refusal:
        raise PlscError(f"{path}: {refusal}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, UnicodeDecodeError, OverflowError) as error:
        raise PlscError(f"{path}: not a verification .bin pickle ({type(error).__name__}: {error})") from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise PlscError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(content).__name__}")
    bins, issame_list = content
    if not isinstance(bins, (list, tuple)):
        raise PlscError(f"{path}: bins is {type(bins).__name__}, expected a list of encoded images")
    if len(bins) % 2:
        raise PlscError(f"{path}: bins holds {len(bins)} images, expected an even number (pairs 2k, 2k+1)")
    images = [_image_bytes(item, index, path) for index, item in enumerate(bins)]
    return images, _issame_array(issame_list, len(images) // 2, path)


def write_bin(path, images_encoded, issame, protocol=4):
    """Write 2*P encoded images (bytes or uint8 arrays) and issame [P] as a `.bin`, atomically."""
    path = str(path)
    images = [bytes(image) if not isinstance(image, np.ndarray) else image.astype(np.uint8).tobytes()
              for image in images_encoded]
    issame_list = [bool(value) for value in np.asarray(issame).reshape(-1)]
    if len(images) != 2 * len(issame_list):
        raise ValueError(f"{len(images)} images for {len(issame_list)} pairs; need exactly 2 per pair")
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        pickle.dump((images, issame_list), handle, protocol=protocol)
    os.replace(temporary, path)
