"""The driver's journal of finished tasks, so an interrupted run can be resumed.

Each finished task's result (a map output index, an intermediate file, or a commit message) is
written to ``OUT/_temporary/<run>/journal/<stage>/<partition>.pkl`` as soon as the driver receives
it. A resumed run (same job fingerprint and input snapshot, hence the same run id) loads the
journal and skips every task whose recorded files still exist.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import posixpath
import uuid
from typing import Any

from .datasets import is_local


class Journal:
    def __init__(self, fs, root: str) -> None:
        self.fs, self.root = fs, root

    def _path(self, stage: str, partition: int) -> str:
        return posixpath.join(self.root, stage, f"{partition:05d}.pkl")

    def record(self, stage: str, partition: int, result: dict) -> None:
        data = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        path = self._path(stage, partition)
        if is_local(self.fs):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def load(self, stage: str) -> dict[int, dict]:
        out: dict[int, dict] = {}
        try:
            names = self.fs.ls(posixpath.join(self.root, stage), detail=False)
        except FileNotFoundError:
            return out
        for p in names:
            base = posixpath.basename(p)
            if not base.endswith(".pkl"):
                continue
            with contextlib.suppress(Exception):
                out[int(base[:-4])] = pickle.loads(self.fs.cat_file(p))
        return out

    def reset(self) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm(self.root, recursive=True)


def still_valid(fs_shuffle, fs_out, result: dict, pending_uploads: set[str] | None) -> bool:
    """True when every file a journaled result points to is still there to be used."""
    try:
        if "shuffle" in result:
            return fs_shuffle.exists(result["shuffle"].path)
        if "next_input" in result:
            return fs_shuffle.exists(result["next_input"].path)
        if "commit" in result:
            for f in result["commit"]["files"]:
                if f.get("upload"):
                    if pending_uploads is None or f["upload"]["upload_id"] not in pending_uploads:
                        return False
                elif not fs_out.exists(f["tmp"]):
                    return False
            return True
    except Exception:  # noqa: BLE001 - anything odd: recompute the task
        return False
    return False


__all__ = ["Journal", "still_valid"]
_ = Any
