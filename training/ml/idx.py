"""Reading and writing the IDX binary format used by the original MNIST files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

# IDX type code 0x08 means unsigned byte; the last magic byte is the number of dimensions.
_UBYTE = 0x08


class IdxFormatError(ValueError):
    """Raised when bytes do not form a valid unsigned-byte IDX file."""


def encode_idx(array: np.ndarray) -> bytes:
    """Return the IDX encoding (big-endian header + raw uint8 data) of a uint8 array."""
    if array.dtype != np.uint8:
        raise IdxFormatError(f"IDX writer supports uint8 only, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise IdxFormatError(f"unsupported number of dimensions: {array.ndim}")
    header = struct.pack(">BBBB", 0, 0, _UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def decode_idx(data: bytes) -> np.ndarray:
    """Parse IDX bytes into a (read-only view backed) uint8 numpy array."""
    if len(data) < 4:
        raise IdxFormatError("IDX data shorter than its magic number")
    zero1, zero2, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero1 != 0 or zero2 != 0 or type_code != _UBYTE or ndim == 0:
        raise IdxFormatError(f"bad IDX magic {data[:4].hex()}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxFormatError("IDX header truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header_len != expected:
        raise IdxFormatError(f"IDX payload has {len(data) - header_len} bytes, header promises {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def read_idx(path: Path) -> np.ndarray:
    """Read an uncompressed IDX file into a writable uint8 array."""
    return decode_idx(Path(path).read_bytes()).copy()
