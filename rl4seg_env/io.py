"""Crash-safe file writes: write to a temporary file in the same folder, then rename.

A process killed at any moment leaves either the old file or the new one, never a truncated one.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _umask_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: mode of the files this module writes: the one ``open()`` gives (0644 under the usual umask 022)
_FILE_MODE = _umask_file_mode()

#: names of the temporary files an interrupted atomic write leaves behind
TEMP_FILE_GLOB = ".*.tmp"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 -> what open() would give under the process umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def plain_values(value: Any) -> Any:
    """Nested dicts / lists / tuples with every tuple turned into a list: what YAML writes plainly and
    ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, dict):
        return {k: plain_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v) for v in value]
    return value


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a half-written checkpoint."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | os.PathLike, what: str, required: tuple[str, ...] = (),
                    map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(..., weights_only=True)`` and clear errors.

    :param what: the kind of checkpoint, named in errors (e.g. ``"U-Net"``).
    :param required: keys the dict must have.
    :raises FileNotFoundError: no such file.
    :raises ValueError: the file is corrupt or truncated, or not a dict with the ``required`` keys.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or truncated file
        raise ValueError(f"{path}: cannot read {what} checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = sorted(set(required) - set(ckpt)) if isinstance(ckpt, dict) else sorted(required)
    if missing or not isinstance(ckpt, dict):
        found = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: not a {what} checkpoint (missing keys {missing}; found {found})")
    return ckpt


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Compressed ``.npz`` written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())
