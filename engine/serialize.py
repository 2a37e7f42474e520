"""Ship user code by value, and digest exactly what ships.

distributed pickles a task's top-level object by value only when its module is ``__main__`` or
registered with cloudpickle; a user function nested inside a job or stage object goes by reference
and fails on a worker that cannot import its module. The driver therefore serializes the job's
functions itself (:func:`dumps`), registering every *user* module (:func:`is_user_module`: not the
standard library, not installed packages, not the engine) for pickling by value, once per run.

:func:`code_digest` is the job fingerprint's view of the same payload. It walks what cloudpickle
would ship, by the same rule, and hashes a canonical form of it, because the pickle bytes
themselves differ between processes for unchanged code (set order follows ``PYTHONHASHSEED``;
code objects and by-value modules carry their absolute file paths and line numbers). The walk:

* a function of a user module, of ``__main__``, or one that cannot be imported by name (a lambda,
  a nested function) is hashed by value: its bytecode, constants and names (recursively through
  nested code), defaults, closure values, attributes, and the module globals its code names;
* a module object of the user's is hashed by value whole (cloudpickle ships its whole namespace),
  so ``import helpers; helpers.scale(...)`` covers every function and constant of ``helpers``;
* a class of the user's is hashed with its bases and namespace (methods included);
* functions, classes and modules of installed packages, the standard library and the engine are
  hashed by name only (their versions are not part of the digest; the engine version is, in the
  job fingerprint);
* data (numbers, strings, containers, numpy arrays, Arrow objects, instances of any class) is
  hashed by the value pickle would send (``__reduce_ex__``); sets are hashed in sorted order.

Not hashed, so they may change without changing the digest: file paths, line numbers and
comments (only bytecode is hashed, not source text), type annotations, module names of by-value
code (a job file loaded by path and the same file imported as a module agree). Docstrings *are*
hashed (they are constants of the code). Bytecode is Python-version specific, so is the digest.

An object that has no value to hash (a lock, an open file, a socket, a generator) raises
:class:`CodeNotHashable` naming where it was found, and whether cloudpickle could ship it at all.
"""

from __future__ import annotations

import copyreg
import functools
import hashlib
import io
import os
import pickle
import sys
import sysconfig
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

_ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


def _system_dirs() -> tuple[str, ...]:
    return _system_dirs_of(tuple(sys.path), sys.prefix, sys.base_prefix)


@functools.lru_cache(maxsize=16)
def _system_dirs_of(path: tuple[str, ...], prefix: str, base_prefix: str) -> tuple[str, ...]:
    dirs = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(name)
        if p:
            dirs.add(os.path.realpath(p))
    for p in path:
        if p and ("site-packages" in p or "dist-packages" in p):
            dirs.add(os.path.realpath(p))
    dirs.add(os.path.realpath(prefix))
    dirs.add(os.path.realpath(base_prefix))
    return tuple(sorted(dirs))


@functools.lru_cache(maxsize=2048)
def _real_dir(directory: str) -> str:
    return os.path.realpath(directory)


def _realpath(path: str) -> str:
    """``os.path.realpath(path)``, resolving each directory once (hundreds of modules share a few)."""
    if os.path.islink(path):
        return os.path.realpath(path)
    return os.path.join(_real_dir(os.path.dirname(path)), os.path.basename(path))


@functools.lru_cache(maxsize=8192)
def _is_user_file(path: str, system: tuple[str, ...]) -> bool:
    real = _realpath(path)
    if real.startswith(_ENGINE_DIR + os.sep):
        return False
    return not any(real.startswith(d + os.sep) for d in system)


def is_user_module(mod: Any, system: tuple[str, ...] | None = None) -> bool:
    """Whether ``mod`` is the user's own code (shipped by value): a file outside the engine and the
    interpreter's and installed packages' directories. ``__main__`` is not (cloudpickle ships its
    functions by value anyway)."""
    if mod is None or getattr(mod, "__name__", None) == "__main__":
        return False
    path = getattr(mod, "__file__", None)
    if not path or not isinstance(path, str):
        return False
    return _is_user_file(path, _system_dirs() if system is None else system)


def user_modules() -> list[Any]:
    """Loaded modules that are the user's own code (candidates for pickling by value)."""
    system = _system_dirs()
    return [mod for name, mod in list(sys.modules.items()) if is_user_module(mod, system)]


class _Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, except that code shipped by value keeps its real file name (cloudpickle
    writes ``<dynamic-code>``): a traceback from a worker then names the user's file and line, and
    shows the line's text wherever that file can be read. (The job fingerprint never looks at file
    names: see :func:`code_digest`.)"""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            from cloudpickle import cloudpickle as impl
            kind, args = impl._code_reduce(obj)
            return kind, tuple(obj.co_filename if a == "<dynamic-code>" else a for a in args)
        return super().reducer_override(obj)


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
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=pickle.DEFAULT_PROTOCOL).dump(obj)
        return buffer.getvalue()
    finally:
        for mod in registered:
            try:
                cloudpickle.unregister_pickle_by_value(mod)
            except ValueError:
                pass


# -- the digest --------------------------------------------------------------------------------


class CodeNotHashable(ValueError):
    """An object reachable from the job's functions has no stable value to hash."""

    def __init__(self, where: str, type_name: str, reason: str, shippable: bool) -> None:
        super().__init__(f"{where}: {type_name}: {reason}")
        self.where, self.type_name, self.reason, self.shippable = where, type_name, reason, shippable


@dataclass(frozen=True)
class CodeDigest:
    """The digest of the code reachable from some functions, and what it covered."""

    digest: str                      # sha256 hex
    functions: int                   # functions hashed by value (bytecode, globals, closures)
    modules: tuple[str, ...]         # user modules whose code or namespace was hashed, sorted


_ATOMS = (type(None), bool, int, float, complex, str, bytes, bytearray)
_DESCRIPTORS = (types.GetSetDescriptorType, types.MemberDescriptorType, types.WrapperDescriptorType,
                types.MethodDescriptorType, types.ClassMethodDescriptorType, types.MethodWrapperType)
# Not hashed in a class namespace: slots and caches of the interpreter (copyreg adds __slotnames__ at the
# first pickle), the module name, annotations, and the docstring (a dataclass writes the reprs of its
# defaults into it, and a set's repr follows the hash seed).
_CLASS_SKIP = frozenset({"__dict__", "__weakref__", "_abc_impl", "__slotnames__", "__module__",
                         "__annotations__", "__doc__", "__firstlineno__", "__static_attributes__"})


def _atom(obj: Any) -> bytes:
    t = type(obj)
    if obj is None:
        return b"N"
    if t is bool:
        return b"T" if obj else b"F"
    if t is int:
        return b"i" + str(obj).encode()
    if t is float or t is complex:
        return b"f" + repr(obj).encode()
    if t is str:
        return b"s" + obj.encode("utf-8", "surrogatepass")
    if t is bytes:
        return b"b" + obj
    return b"B" + bytes(obj)


def _join(tag: bytes, parts: Sequence[bytes]) -> bytes:
    h = hashlib.sha256(tag)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()


def _code_names(code: types.CodeType, out: set[str]) -> set[str]:
    out.update(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code_names(c, out)
    return out


class _Walker:
    def __init__(self) -> None:
        self.system = _system_dirs()
        self.memo: dict[int, tuple[Any, bytes]] = {}   # id -> (object kept alive, token)
        self.active: dict[int, int] = {}               # id -> depth, while its token is being computed
        self.where: list[str] = []
        self.user: dict[str, bool] = {}
        self.functions = 0
        self.modules: set[str] = set()

    # -- classification ---------------------------------------------------------------------
    def _user(self, module_name: str | None) -> bool:
        if not module_name:
            return False
        if module_name not in self.user:
            self.user[module_name] = is_user_module(sys.modules.get(module_name), self.system)
        return self.user[module_name]

    def _by_name(self, obj: Any) -> bool:
        """True if cloudpickle would ship ``obj`` (a function or class) by reference."""
        module_name, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not module_name or not isinstance(qualname, str) or "<" in qualname or module_name == "__main__":
            return False
        mod = sys.modules.get(module_name)
        if mod is None or self._user(module_name):
            return False
        found: Any = mod
        for part in qualname.split("."):
            found = getattr(found, part, None)
        return found is obj

    @staticmethod
    def _ref(tag: bytes, obj: Any) -> bytes:
        return tag + f"{getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', None)}".encode()

    # -- walking ----------------------------------------------------------------------------
    def token(self, obj: Any) -> bytes:
        if type(obj) in _ATOMS:
            return _atom(obj)
        key = id(obj)
        hit = self.memo.get(key)
        if hit is not None:
            return hit[1]
        if key in self.active:       # a cycle: name the back edge by its depth, deterministic for a given walk
            return b"cycle" + str(len(self.active) - self.active[key]).encode()
        self.active[key] = len(self.active)
        try:
            tok = self._compute(obj)
        finally:
            del self.active[key]
        self.memo[key] = (obj, tok)
        return tok

    def _labelled(self, label: str, obj: Any) -> bytes:
        self.where.append(label)
        try:
            return self.token(obj)
        finally:
            self.where.pop()

    def _compute(self, obj: Any) -> bytes:
        t = type(obj)
        if t is tuple or t is list:
            return _join(b"tuple" if t is tuple else b"list", [self.token(x) for x in obj])
        if t is dict:
            return _join(b"dict", [p for k, v in obj.items() for p in (self.token(k), self.token(v))])
        if t is set or t is frozenset:
            return _join(b"set", sorted(self.token(x) for x in obj))
        if t is types.CodeType:
            return self._code(obj)
        if t is types.FunctionType:
            return self._function(obj)
        if isinstance(obj, type):
            return self._class(obj)
        if t is types.ModuleType:
            return self._module(obj)
        if t is types.BuiltinFunctionType:     # also bound builtin methods such as "".join
            owner = obj.__self__
            if owner is None or isinstance(owner, types.ModuleType):
                return self._ref(b"R", obj)
            return _join(b"bmeth", [self.token(owner), _atom(obj.__name__)])
        if t is types.MethodType:
            return _join(b"meth", [self.token(obj.__func__), self.token(obj.__self__)])
        if t is staticmethod or t is classmethod:
            return _join(t.__name__.encode(), [self.token(obj.__func__)])
        if t is property:
            return _join(b"property", [self.token(x) for x in (obj.fget, obj.fset, obj.fdel, obj.__doc__)])
        if t is types.MappingProxyType:
            return _join(b"proxy", [self.token(dict(obj))])
        if t in _DESCRIPTORS:
            owner = getattr(obj, "__objclass__", None)
            return _join(b"descr", [self.token(owner), _atom(getattr(obj, "__name__", ""))])
        if t is types.CellType:
            try:
                return _join(b"cell", [self.token(obj.cell_contents)])
            except ValueError:
                return b"cell-empty"
        if obj is Ellipsis or obj is NotImplemented:
            return b"R" + repr(obj).encode()
        if t.__module__ == "numpy" and t.__name__ == "ndarray" and not obj.dtype.hasobject:
            import numpy as np
            return _join(b"ndarray", [_atom(obj.dtype.str), _atom(repr(obj.shape)),
                                      np.ascontiguousarray(obj).tobytes()])
        return self._reduced(obj)

    def _code(self, code: types.CodeType) -> bytes:
        # No co_filename, co_firstlineno, co_linetable: moving code or adding comments does not count.
        consts = [self.token(c) for c in code.co_consts]
        return _join(b"code", [
            _atom(code.co_name), _atom(getattr(code, "co_qualname", code.co_name)),
            _atom(f"{code.co_argcount},{code.co_posonlyargcount},{code.co_kwonlyargcount},{code.co_flags}"),
            code.co_code, _join(b"consts", consts),
            _atom(repr(code.co_names)), _atom(repr(code.co_varnames)),
            _atom(repr(code.co_freevars)), _atom(repr(code.co_cellvars)),
            getattr(code, "co_exceptiontable", b""),
        ])

    def _function(self, fn: types.FunctionType) -> bytes:
        if self._by_name(fn):
            return self._ref(b"R", fn)
        self.functions += 1
        if fn.__module__ and (fn.__module__ == "__main__" or self._user(fn.__module__)):
            self.modules.add(fn.__module__)
        named = bool(self.where) and self.where[-1].endswith(f"({fn.__qualname__})")  # a root label names it
        self.where.append("" if named else fn.__qualname__)
        try:
            code = fn.__code__
            names = sorted(n for n in _code_names(code, set()) if n in fn.__globals__)
            globals_ = [p for n in names for p in (_atom(n), self._labelled(f"global {n}", fn.__globals__[n]))]
            closure = [self._labelled(f"closure variable {name}", cell)
                       for name, cell in zip(code.co_freevars, fn.__closure__ or ())]
            attrs = {k: v for k, v in sorted(fn.__dict__.items())}
            return _join(b"function", [
                _atom(fn.__qualname__), self._code(code),
                self._labelled("defaults", fn.__defaults__), self._labelled("keyword defaults", fn.__kwdefaults__),
                _join(b"closure", closure), _join(b"globals", globals_), self._labelled("attributes", attrs),
            ])
        finally:
            self.where.pop()

    def _class(self, cls: type) -> bytes:
        if self._by_name(cls) or cls.__module__ == "builtins":
            return self._ref(b"C", cls)
        if self._user(cls.__module__) or cls.__module__ == "__main__":
            self.modules.add(cls.__module__)
        self.where.append(f"class {cls.__qualname__}")
        try:
            items = [p for k, v in sorted(vars(cls).items()) if k not in _CLASS_SKIP
                     for p in (_atom(k), self._labelled(f"attribute {k}", v))]
            return _join(b"class", [_atom(cls.__qualname__), self.token(cls.__bases__), _join(b"ns", items)])
        finally:
            self.where.pop()

    def _module(self, mod: types.ModuleType) -> bytes:
        if not is_user_module(mod, self.system):
            return b"M" + mod.__name__.encode()
        self.modules.add(mod.__name__)
        self.where.append(f"module {mod.__name__}")
        try:
            items = [p for k, v in sorted(vars(mod).items()) if not (k.startswith("__") and k.endswith("__"))
                     for p in (_atom(k), self._labelled(k, v))]
            return _join(b"module", items)
        finally:
            self.where.pop()

    def _reduced(self, obj: Any) -> bytes:
        """Any other object, by what pickle would send for it."""
        t = type(obj)
        try:
            reducer = copyreg.dispatch_table.get(t)
            rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as exc:  # noqa: BLE001 - anything unpicklable ends up here
            raise self._fail(obj, f"{type(exc).__name__}: {exc}") from exc
        if isinstance(rv, str):       # pickled by name; a decorated function (lru_cache) also by what it wraps
            name = b"G" + f"{getattr(obj, '__module__', t.__module__)}:{rv}".encode()
            wrapped = getattr(obj, "__wrapped__", None)
            return name if wrapped is None else _join(b"wrapper", [name, self._labelled("wrapped", wrapped)])
        if not isinstance(rv, tuple) or not 2 <= len(rv) <= 6:
            raise self._fail(obj, f"__reduce_ex__ returned {type(rv).__name__}")
        fn, args, state, items, pairs = (tuple(rv) + (None,) * 4)[:5]
        parts = [self.token(fn), self.token(args), self.token(state),
                 self.token(list(items) if items is not None else None),
                 self.token([tuple(p) for p in pairs] if pairs is not None else None)]
        return _join(b"reduce", parts)

    def _fail(self, obj: Any, reason: str) -> CodeNotHashable:
        try:
            dumps(obj)
            shippable = True
        except Exception:  # noqa: BLE001
            shippable = False
        where = " -> ".join(w for w in self.where if w) or "the job"
        return CodeNotHashable(where, f"{type(obj).__module__}.{type(obj).__qualname__}", reason, shippable)


def code_digest(functions: Sequence[Any]) -> CodeDigest:
    """The digest of everything the tasks would execute for ``functions`` (see the module docstring).

    Deterministic across processes, hash seeds and folders for unchanged code; raises
    :class:`CodeNotHashable` for an object with no stable value.
    """
    walker = _Walker()
    try:
        tokens = [walker._labelled(label, fn) for label, fn in _labels(functions)]
    except RecursionError as exc:
        raise CodeNotHashable(" -> ".join(walker.where[:6]) + " ...", "object graph",
                              "nested too deeply to hash", True) from exc
    return CodeDigest(_join(b"code-digest/1", tokens).hex(), walker.functions, tuple(sorted(walker.modules)))


def _labels(functions: Sequence[Any]) -> list[tuple[str, Any]]:
    out = []
    for fn in functions:
        if isinstance(fn, tuple) and len(fn) == 2 and isinstance(fn[0], str):
            out.append(fn)
        else:
            out.append((getattr(fn, "__qualname__", type(fn).__name__), fn))
    return out


__all__ = ["dumps", "user_modules", "is_user_module", "code_digest", "CodeDigest", "CodeNotHashable"]
