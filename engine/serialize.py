"""Ship user code by value.

distributed pickles a task's top-level object by value only when its module is ``__main__`` or
registered with cloudpickle; a user function nested inside a job or stage object goes by reference
and fails on a worker that cannot import its module. The driver therefore serializes the job's
functions itself, registering every *user* module (not the standard library, not installed
packages, not the engine) for pickling by value, once per run.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any

import cloudpickle

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


def _system_dirs() -> tuple[str, ...]:
    dirs = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(name)
        if p:
            dirs.add(os.path.realpath(p))
    for p in sys.path:
        if p and ("site-packages" in p or "dist-packages" in p):
            dirs.add(os.path.realpath(p))
    dirs.add(os.path.realpath(sys.prefix))
    dirs.add(os.path.realpath(sys.base_prefix))
    return tuple(dirs)


def user_modules() -> list[Any]:
    """Loaded modules that are the user's own code (candidates for pickling by value)."""
    system = _system_dirs()
    found = []
    for name, mod in list(sys.modules.items()):
        if mod is None or name == "__main__":
            continue
        path = getattr(mod, "__file__", None)
        if not path:
            continue
        real = os.path.realpath(path)
        if real.startswith(_ENGINE_DIR + os.sep) or any(real.startswith(d + os.sep) for d in system):
            continue
        found.append(mod)
    return found


def dumps(obj: Any) -> bytes:
    """cloudpickle ``obj`` with the user's modules pickled by value."""
    registered = []
    for mod in user_modules():
        try:
            cloudpickle.register_pickle_by_value(mod)
            registered.append(mod)
        except ValueError:
            pass
    try:
        return cloudpickle.dumps(obj)
    finally:
        for mod in registered:
            try:
                cloudpickle.unregister_pickle_by_value(mod)
            except ValueError:
                pass


__all__ = ["dumps", "user_modules"]
