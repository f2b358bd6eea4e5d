"""Files shared by the processes of a run without file locks (fcntl is unreliable on NFS/GCS).

One process writes a file to a private temporary name in the same directory and renames
it into place (`os.replace` is atomic on POSIX filesystems): readers see either no file
or the whole file. Processes that need a file another process writes poll for it with a
bounded timeout, and the timeout error names the path and the writer they waited for.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Callable


def temp_name(path: str) -> str:
    """A private temporary name next to `path` (same directory, so the rename is atomic)."""
    d, base = os.path.split(path)
    stem, ext = os.path.splitext(base)
    return os.path.join(d, f".{stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{ext}")


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Calls `write(tmp)` and renames tmp to `path` (the last complete writer wins; every
    writer writes the same content because the name is a key of that content)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def wait_for(path: str, timeout_s: float, writer: str, poll_s: float = 0.05) -> None:
    """Returns once `path` exists; raises TimeoutError naming it after `timeout_s` seconds."""
    deadline = time.monotonic() + float(timeout_s)
    delay = poll_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:g} s for {path} ({writer} writes it); check that process is "
                               "running and sees the same storage, or raise config.data.wait_timeout_s")
        time.sleep(delay)
        delay = min(delay * 1.5, 2.0)
