"""Every state file plsc writes or reads back, read without running code and written crash-safe.

Files: `.pdparams`, `.pdopt`, `.pdstates`, `.pdloss` of plsc, PLSC 2.x and plain `paddle.save`
state dicts. All are pickles, and a pickle can call any function while it loads (a checkpoint
from a model zoo could run `os.system`), so `load_state` uses an unpickler that knows only
containers, strings, numbers and numeric numpy arrays, and refuses everything else in one line
naming the file. It returns numpy arrays, never Tensors: callers hand them to `set_value` /
`set_state_dict`, which take numpy.

`paddle.save` spells a Tensor inside a nested object as the tuple `(tensor name, ndarray)`
(built by calling `tuple`); such pairs come back as the bare array, as `paddle.load` does.

`save_state` writes what `load_state` reads (and `paddle.load` too): Tensors become numpy
arrays, the pickle goes to a temporary file that is flushed, fsynced and renamed over the target,
so a reader sees the old file or the new one, never a part.
"""
import codecs
import collections
import os
import pickle
import struct

import numpy as np

from plsc.errors import PlscError

PICKLE_PROTOCOL = 4  # paddle.save's default; the highest every supported Python reads
# numpy array kinds a state may hold: bool, signed/unsigned int, float, complex.
NUMERIC_KINDS = frozenset("biufc")


class UnsafeStateError(PlscError):
    """A state file asks for something other than data (a class, a function): refused, not run."""


class _Refused(Exception):
    """Raised inside the unpickler; `load_state` turns it into an UnsafeStateError naming the file."""


def _numeric_dtype(spec, align=False, copy=False):
    """`numpy.dtype(spec, align, copy)` for numeric dtypes only (an object dtype holds arbitrary objects)."""
    if not isinstance(spec, str):
        raise _Refused(f"dtype {spec!r} is not a plain numeric type code")
    try:
        dtype = np.dtype(spec)
    except TypeError as error:
        raise _Refused(f"unknown dtype {spec!r}") from error
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise _Refused(f"dtype {spec!r} is not numeric")
    return np.dtype(dtype, align=bool(align), copy=bool(copy))


def _checked_dtype(dtype):
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise _Refused(f"array of dtype {dtype!r} is not numeric")
    return dtype


def _reconstruct(cls, shape, code):
    """numpy's `_reconstruct`: an empty ndarray that BUILD then fills (checked in `load_build`)."""
    if cls is not np.ndarray:
        raise _Refused(f"array of class {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _scalar(dtype, data=b""):
    """numpy's `scalar(dtype, bytes)`: a numpy scalar such as np.float32(1.0)."""
    dtype = _checked_dtype(dtype)
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise _Refused("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0]


def _frombuffer(buffer, dtype, shape, order):
    """numpy's `_frombuffer` (protocol 5 out-of-band arrays)."""
    array = np.frombuffer(bytes(buffer), dtype=_checked_dtype(dtype))
    return array.reshape(shape, order=order).copy()


def _encode(text, encoding="latin1"):
    """`_codecs.encode(str, 'latin1')`: how protocol 2 spells bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("codecs.encode with other arguments than (str, 'latin1')")
    return codecs.encode(text, encoding)


def _container(kind):
    def build(*args):
        return kind(*args)
    return build


# module -> name -> callable standing in for it. numpy 2 moved numpy.core to numpy._core;
# files from both generations exist.
_ALLOWED = {
    "builtins": {"tuple": _container(tuple), "list": _container(list), "set": _container(set),
                 "frozenset": _container(frozenset), "bytearray": _container(bytearray),
                 "complex": _container(complex)},
    "__builtin__": {"set": _container(set), "frozenset": _container(frozenset)},
    "collections": {"OrderedDict": collections.OrderedDict},
    "_codecs": {"encode": _encode},
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[_module] = {"_reconstruct": _reconstruct, "scalar": _scalar}
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[_module] = {"_frombuffer": _frombuffer}
_ALLOWED["numpy"] = {"ndarray": np.ndarray, "dtype": _numeric_dtype}


class SafeUnpickler(pickle._Unpickler):  # the Python implementation: its BUILD step can be checked
    """Unpickles data only: every global must be in _ALLOWED, every BUILD must fill an array or dtype."""

    def find_class(self, module, name):
        found = _ALLOWED.get(module, {}).get(name)
        if found is None:
            raise _Refused(f"refused to load {module}.{name} (only data is accepted, not code)")
        return found

    def persistent_load(self, pid):
        raise _Refused("refused a persistent reference")

    def load_build(self):
        state = self.stack.pop()
        instance = self.stack[-1]
        if isinstance(instance, np.ndarray) and type(instance) is np.ndarray:
            # (version, shape, dtype, is_fortran, raw bytes): an object array would carry a list here.
            if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], (bytes, bytearray))):
                raise _Refused("malformed numpy array")
            _checked_dtype(state[2])
            instance.__setstate__(state)
        elif isinstance(instance, np.dtype):
            # (version, byte order, subarray, names, fields, elsize, alignment, flags): only the byte
            # order may vary for a plain numeric dtype; the rest would redefine its memory layout.
            if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=")
                    and state[2:] == (None, None, None, -1, -1, 0)):
                raise _Refused("malformed numpy dtype")
            instance.__setstate__(state)
        else:
            raise _Refused(f"refused to set the state of a {type(instance).__name__}")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def _is_paddle_tensor_pair(value):
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], np.ndarray))


def _untuple_tensors(value):
    """Replace paddle.save's (name, ndarray) Tensor pairs by the array, anywhere in the structure."""
    if _is_paddle_tensor_pair(value):
        return value[1]
    if isinstance(value, dict):
        return type(value)((key, _untuple_tensors(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_untuple_tensors(item) for item in value)
    return value


def load_state(path):
    """The content of a state file: dicts, lists, tuples, str, bytes, numbers, None, numeric ndarrays.

    Refuses anything that would run code (UnsafeStateError) and reports a truncated or foreign
    file as a PlscError naming it.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            content = SafeUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError:
        raise PlscError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PlscError(f"{path}: is a directory, not a state file") from None
    except _Refused as error:
        raise UnsafeStateError(f"{path}: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OverflowError, UnicodeDecodeError, struct.error) as error:
        # The Python unpickler meets an unknown opcode byte as a KeyError: the file is no pickle at all.
        reason = ("truncated" if isinstance(error, EOFError) else "not a pickle" if isinstance(error, KeyError)
                  else f"{type(error).__name__}: {error}")
        raise PlscError(f"{path}: truncated, corrupt or not a state file ({reason})") from None
    return _untuple_tensors(content)


def to_plain(value):
    """Tensors (and Paddle's generator states) -> numpy / plain values, recursively."""
    import paddle

    if isinstance(value, paddle.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item) for item in value)
    return value


def fsync_directory(directory):
    """Make a rename or a new entry in `directory` durable (POSIX needs the directory itself synced)."""
    descriptor = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_state(obj, path):
    """Write `obj` (containers of str, numbers, numpy arrays and Tensors) to `path` atomically and durably."""
    path = os.fspath(path)
    content = to_plain(obj)
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as handle:
        pickle.dump(content, handle, protocol=PICKLE_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))
