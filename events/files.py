"""Writing a file so a reader sees the old content or the new, never a part: the one way it is done.

It lives in ``events/`` because that is the lowest layer every writer can
import (identity's PKI files, the sidecar's config cache, SDS files and status
file, Envoy's bootstrap, the health checker's status, the launcher's state).

Invariants:
- ``write_file_atomic`` writes to a temp file in the same directory (created
  with the final ``mode`` before any data is in it, so a private key is never
  readable by others, not even for a moment), fsyncs it, renames it over
  ``path`` and fsyncs the directory: after a crash the path holds one whole
  version.
- On any failure the temp file is removed and the error raised; ``path`` is
  untouched.
- ``stamp`` is the one way a reader notices such a replacement (renewed
  certificates and keys): ``stat`` only, so it is cheap enough to call before
  every handshake or signature.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["stamp", "write_file_atomic"]


def write_file_atomic(path: Path | str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path``'s content with ``data`` atomically (temp file, fsync, rename, fsync the directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600 already; this sets the final mode before any data
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # the rename itself survives a crash only once the directory is on disk
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # a file system that cannot fsync a directory: the rename is as durable as it gets


def stamp(*paths: Path | str) -> tuple:
    """What changes when any of ``paths`` is rewritten or replaced by rename: (mtime, size, inode) each, None if
    missing."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)
