"""Atomic file writes: a temp file in the same folder, then ``os.replace``.

A process killed mid-write leaves at most a ``*.tmp`` file, never a truncated artifact
under the real name, so nothing half-written is read back as valid on resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["write_atomic", "write_csv", "write_json", "write_npz"]


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)``, then move the temp file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temp))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, data: Any) -> Path:
    return write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, default=_json_default)))


def write_csv(path: Path, frame: pd.DataFrame, *, index: bool = False) -> Path:
    return write_atomic(path, lambda p: frame.to_csv(p, index=index))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    def write(p: Path) -> None:
        with open(p, "wb") as handle:
            np.savez(handle, **arrays)

    return write_atomic(path, write)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
