"""Read a PyTorch checkpoint (`torch.save` of a state dict) into numpy arrays, without torch.

Two on-disk formats exist:

* **legacy** (torch < 1.6, and `_use_new_zipfile_serialization=False`): five pickles back to
  back -- magic number, protocol version, system info, the object itself, the list of storage
  keys in file order -- followed by each storage as an 8-byte little-endian element count and its
  raw bytes. Inside the object pickle a tensor is `torch._utils._rebuild_tensor_v2(storage,
  offset, size, stride, requires_grad, hooks)`, where `storage` is a *persistent id*
  `("storage", torch.FloatStorage, key, location, numel, view_metadata)` that refers to data
  stored after the pickle.
* **zip** (torch >= 1.6): `<archive>/data.pkl` with the same tensor calls, and each storage in
  `<archive>/data/<key>`.

Only the globals a state dict needs are allowed (an OrderedDict, tensor rebuilds, storage
types); anything else is refused, like `torch.load(weights_only=True)`, so reading a checkpoint
never runs code from it.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchPickleError(ValueError):
    """The file is not a checkpoint this reader understands."""


@dataclass
class _Storage:
    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None  # filled once the bytes after the pickle are read


@dataclass
class _View:
    """A typed view of part of a root storage (legacy format `view_metadata`)."""

    root: _Storage
    offset: int  # in elements
    numel: int


@dataclass
class _LazyTensor:
    storage: _Storage | _View
    offset: int
    size: tuple
    stride: tuple

    def materialize(self) -> np.ndarray:
        storage = self.storage
        base_offset = 0
        if isinstance(storage, _View):
            base_offset = storage.offset
            storage = storage.root
        data = storage.data
        if data is None:
            raise TorchPickleError(f"storage {storage.key!r} was referenced but never stored")
        itemsize = data.dtype.itemsize
        start = base_offset + self.offset
        if not self.size:
            return np.array(data[start], dtype=data.dtype)
        extent = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        if start + extent > data.size:
            raise TorchPickleError(
                f"tensor of size {self.size} at offset {start} overruns storage {storage.key!r} "
                f"of {data.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            data[start:],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view)  # a copy: does not keep the whole file buffer alive


class _StorageType:
    """Stands for `torch.FloatStorage` etc. inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, *_args):
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_args):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TorchPickleError(
                f"refusing global {module}.{name}: only state dicts of plain tensors are read"
            ) from None

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise TorchPickleError(f"unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise TorchPickleError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        root = self.storages.get(key)
        if root is None:
            root = _Storage(key, storage_type.dtype, int(numel))
            self.storages[key] = root
        if view_metadata is not None:
            _view_key, offset, view_size = view_metadata
            return _View(root, int(offset), int(view_size))
        return root


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v) for v in obj)
    return obj


def _read_exact(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TorchPickleError(f"truncated file: expected {n} bytes of {what}, got {len(data)}")
    return data


def _load_legacy(f) -> object:
    try:
        magic = pickle.load(f)
    except Exception as exc:
        raise TorchPickleError(f"not a torch checkpoint: {exc}") from None
    if magic != LEGACY_MAGIC:
        raise TorchPickleError("not a torch checkpoint: wrong magic number")
    protocol = pickle.load(f)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise TorchPickleError(f"unsupported legacy protocol version {protocol!r}")
    sys_info = pickle.load(f)
    if not sys_info.get("little_endian", True):
        raise TorchPickleError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    result = _Unpickler(f, storages).load()
    keys = pickle.load(f)
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise TorchPickleError(f"storage {key!r} is stored but never referenced")
        (numel,) = struct.unpack("<q", _read_exact(f, 8, f"storage {key} size"))
        nbytes = numel * storage.dtype.itemsize
        raw = _read_exact(f, nbytes, f"storage {key}")
        storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"), count=numel)
    return _materialize(result)


def _load_zip(path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise TorchPickleError("zip checkpoint without data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with archive.open(pickles[0]) as f:
            result = _Unpickler(io.BytesIO(f.read()), storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
    return _materialize(result)


def load(path: str | os.PathLike) -> object:
    """Load a torch checkpoint of tensors (e.g. a state dict) with numpy arrays for tensors."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        return _load_legacy(f)
