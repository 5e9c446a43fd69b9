"""Atomic file writes: a private temporary file in the target's directory, renamed over the target.

Every file this package writes for a user (model files, training checkpoints,
validation reports, benchmark results, Butler configuration) goes through
`atomic_write_path`, so that

- an interrupted or failed write never leaves a half-written file under the
  target's name, nor a stale temporary file;
- the temporary file is created exclusively (``O_CREAT | O_EXCL`` with a
  random name, as `tempfile.mkstemp` does), so a file or symbolic link that
  someone placed at a predictable name can neither redirect the write
  outside the target's directory nor be overwritten;
- the rename (`os.replace`) stays within one directory, hence one file system,
  where it is atomic.
"""

from __future__ import annotations

__all__ = ["atomic_write_path"]

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_write_path(target: str | Path, mode: int | None = None) -> Iterator[Path]:
    """A fresh temporary path next to ``target``, renamed to ``target`` when the block succeeds.

    The block writes the file at the yielded path (by name: a library that
    takes a file name, such as ``savefig`` or ``safetensors``, may replace it,
    which is safe because the name is random and lies in ``target``'s own
    directory).  If the block raises, the temporary file is removed and
    ``target`` is left as it was.

    Parameters
    ----------
    target
        The file to create or replace.  Its directory must exist.  If
        ``target`` itself is a symbolic link, the link is replaced by the new
        file (the file it pointed to is left untouched).
    mode
        Permission bits of the new file; default what a plain ``open`` would
        give (``0o666`` less the process umask) rather than `tempfile`'s
        owner-only ``0o600``.

    Yields
    ------
    temporary
        Path of the temporary file, already created (empty) and closed.

    Raises
    ------
    FileNotFoundError
        If ``target``'s directory does not exist.
    """
    target = Path(target)
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    temporary = Path(name)
    try:
        os.close(handle)
        os.chmod(temporary, _default_file_mode() if mode is None else mode)
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _default_file_mode() -> int:
    """``0o666`` less the process umask: the mode of a file made by a plain ``open``."""
    return 0o666 & ~_process_umask()


def _process_umask() -> int:
    """The process umask, read from ``/proc`` where Linux states it (without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the umask can only be read by setting it, which is process-wide: it is restored at once.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
