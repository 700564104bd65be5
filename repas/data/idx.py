"""Reader for IDX files (MNIST, Fashion-MNIST), gzipped or plain, with integrity checks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from repas.errors import RepasError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in an IDX file; a RepasError names the file if it is damaged."""
    path = Path(path)
    if not path.exists():
        raise RepasError(f"missing data file {path}")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise RepasError(f"{path} is corrupt or truncated ({e}); reinstall or re-copy it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise RepasError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise RepasError(f"{path} is truncated: its header is incomplete")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise RepasError(f"{path} is truncated or corrupt: header promises shape {shape} "
                         f"({expected} bytes) but the file holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
