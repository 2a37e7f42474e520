"""Run fences: nothing is written into an output after its run has ended.

A run's task attempts can outlive it: a speculative loser stuck in user code, an attempt on a frozen
worker, the tasks of a driver that died. Each run therefore has a *fence*: the object
``OUT/_temporary/<run>/_fence`` holding a token. The driver writes it when the run starts (holding the
output's lock, after removing what dead runs left) and deletes it when the run ends: at the start of
the job commit, before anything is published, and when the run fails. Only the driver creates the
run's temporary directory; tasks never re-create it.

Writers (task attempts, :class:`engine.commit.ParquetAttemptWriter` and the shuffle files of
``engine.tasks``) follow one rule: check the fence before opening a file, and after creating anything
(a file, a multipart upload) check it again before reporting success; when it is closed, remove what
they created (and the run's directories it emptied) and raise :class:`~engine.errors.FencedError`.
The driver follows the mirror rule: close the fence, *then* clean up (remove ``OUT/_temporary``, abort
pending uploads, remove part files no manifest lists). On a store whose reads see every completed
write (local disks, S3), the two rules leave nothing behind: either the writer's second check sees the
fence closed and it removes its own file, or its file existed before the fence closed and the
cleanup, which lists after closing it, removes it.

What is left: an attempt killed (or whose removal fails) between creating its file and its second
check. Its file is an attempt file of an ended run: ``_temporary/<run>/…`` or a pending upload with an
engine name, which the next run (or ``mapreduce clean``) removes under the lock, and which no reader
sees (readers go through the manifest).

>>> fence = RunFence.open(fs, "/data/out", run_id)     # driver, holding the lock   # doctest: +SKIP
>>> fence.check("partition 3", path)                   # a task, before it opens      # doctest: +SKIP
>>> fence.close()                                      # driver, before it publishes  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import time
import uuid

from .commit import TEMPORARY
from .datasets import is_local
from .errors import FencedError

FENCE = "_fence"


class RunFence:
    """The fence of one run; picklable (a file system, paths and a token) so tasks carry it."""

    def __init__(self, fs, out: str, run_id: str, token: str | None = None) -> None:
        self.fs, self.out, self.run_id = fs, out, run_id
        self.token = token or uuid.uuid4().hex
        self.tmp_root = posixpath.join(out, TEMPORARY)
        self.root = posixpath.join(self.tmp_root, run_id)
        self.path = posixpath.join(self.root, FENCE)
        self.closed = False

    # -- driver ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, fs, out: str, run_id: str) -> RunFence:
        """Create the run's temporary directory and open its fence (a fresh token: attempts of an earlier
        driver of the same run id, e.g. before a resume, stay fenced off)."""
        fence = cls(fs, out, run_id)
        data = fence.token.encode()
        if is_local(fs):
            for _ in range(5):          # an ended run's fenced attempt may remove an empty _temporary meanwhile
                os.makedirs(fence.root, exist_ok=True)
                tmp = f"{fence.path}.{uuid.uuid4().hex[:8]}.tmp"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, fence.path)
                    break
                except FileNotFoundError:
                    continue
            else:
                raise OSError(f"could not create the run fence {fence.path}")
        else:
            fs.pipe_file(fence.path, data)
        return fence

    def close(self) -> None:
        """Close the fence: from now on no attempt of this run writes anything (idempotent)."""
        if self.closed:
            return
        for attempt in range(4):
            try:
                if is_local(self.fs):
                    os.unlink(self.path)
                else:
                    self.fs.rm_file(self.path)
                break
            except FileNotFoundError:
                break
            except Exception:  # noqa: BLE001 - a store hiccup: the fence must close, so try again
                if attempt == 3:
                    raise
                time.sleep(0.2 * 2 ** attempt)
        self.closed = True

    # -- writers --------------------------------------------------------------------------------
    def is_open(self) -> bool:
        """True while the run that wrote this fence is live (read from the store, never cached)."""
        try:
            if is_local(self.fs):
                with open(self.path, "rb") as f:
                    data = f.read()
            else:
                data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return False
        return data == self.token.encode()

    def error(self, what: str, path: str | None = None) -> FencedError:
        return FencedError(f"{what}: run {self.run_id} of {self.out} has ended (its fence {self.path} is closed), "
                           "so this late attempt wrote nothing"
                           + (f" and discarded {path}" if path else "")
                           + "; the committed output is unaffected", path)

    def check(self, what: str, path: str | None = None) -> None:
        """Raise FencedError when the run has ended (before opening a file, before closing one)."""
        if not self.is_open():
            raise self.error(what, path)

    def discard(self, fs, path: str) -> None:
        """Remove a file a fenced attempt created, then the directories of this run that it left empty
        (a directory holding the open fence is never empty)."""
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm_file(path)
        if not is_local(fs) or not path.startswith(self.root + "/"):
            return
        d = posixpath.dirname(path)
        while d.startswith(self.root) or d == self.tmp_root:
            if os.path.exists(self.path):
                break       # a new driver of the same run id is live: its (still empty) directories stay
            try:
                os.rmdir(d)
            except OSError:
                break
            d = posixpath.dirname(d)


__all__ = ["RunFence", "FENCE"]
