"""Atomic file and folder writes: a kill never leaves a half-written file or folder that looks complete."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` to produce a file next to ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared like any other file
    try:
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (tensors/numpy scalars become numbers, NaN becomes a string)."""

    def _w(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(_jsonable(data), fh, indent=2, sort_keys=False)
            fh.write("\n")

    return atomic_write(path, _w)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    return atomic_write(path, _w)


def sibling_tempdir(final: str | os.PathLike, tag: str = "") -> Path:
    """A hidden temporary folder next to ``final`` (to build it completely, then rename it into place).

    Unlike a bare ``mkdtemp`` (mode 0700) it gets the usual permissions, so the renamed folder is shareable.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, *, keep_complete: str | None = None) -> Iterator[Path]:
    """Build a folder completely, then rename it into place: ``with atomic_dir(final) as tmp: <write into tmp>``.

    Yields a hidden temporary folder beside ``final`` (see ``sibling_tempdir``). When the block succeeds the
    folder becomes ``final``; when it raises (or the process dies) ``final`` is untouched and the temporary folder
    is removed, so a partial folder never appears under the final name.

    What happens to a folder already at ``final``:

    - ``keep_complete=None``: it is replaced, only once the new one is complete (moved aside, then deleted);
    - ``keep_complete="<file name>"``: a folder holding that file is complete (typically another process built
      it concurrently): it is kept and the new build discarded; an incomplete non-empty one makes the rename fail.
    """
    final = Path(final)
    tmp = sibling_tempdir(final)
    try:
        yield tmp
        if keep_complete is not None:
            try:
                os.replace(tmp, final)
            except OSError:  # another process finished first
                if not (final / keep_complete).is_file():
                    raise
            return
        old: Path | None = None
        if final.exists():
            old = sibling_tempdir(final, "old.")
            os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            if old is not None and not final.exists():
                os.replace(old / final.name, final)  # put the previous folder back
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def copy_changed_files(src: str | os.PathLike, dst: str | os.PathLike, pattern: str = "*.yaml") -> bool:
    """Copy the files of folder ``src`` matching ``pattern`` (not its subfolders) into folder ``dst`` where they are
    missing or differ; return whether any was copied (a job's ``.hydra`` config files)."""
    changed = False
    for item in sorted(Path(src).glob(pattern)):
        target = Path(dst) / item.name
        if item.is_file() and (not target.is_file() or target.read_bytes() != item.read_bytes()):
            Path(dst).mkdir(parents=True, exist_ok=True)
            shutil.copy2(item, target)
            changed = True
    return changed
