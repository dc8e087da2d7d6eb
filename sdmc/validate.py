"""One validation layer for everything sdmc reads from disk: typed fields, resource limits, bounded reads.

A file is hostile until checked: a config field may hold the wrong type (``ch: "abc"``, ``ch_mult: 2``), a
size may ask for terabytes (``img_size: 100000``, ``T: 10**7``), a 7 MB zip may inflate to gigabytes, and a
weight may be NaN.  What a file says is checked here *before* anything it sizes is allocated, and every refusal
is one :class:`~sdmc.errors.SdmcError` line naming the file, the field and, for a limit, what was asked and the
limit.

* :func:`check_fields` checks a dataclass instance (model / diffusion / training configs, IR nodes) against its
  own annotations (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[int, ...]``, ``Literal``...)
  and the ``range`` / ``choices`` / ``length`` declared with :func:`spec` in its field metadata.
* :data:`LIMITS` holds the resource limits (:class:`Limits` says why each value was chosen);
  :func:`check_limit` raises :class:`~sdmc.errors.LimitError`.
* :func:`read_member` reads a zip member no larger than a limit (checked on the header and while reading);
  :func:`npy_members` reads the shapes and dtypes of an ``.npz`` without loading its arrays;
  :func:`check_finite` names the first tensor holding NaN or Inf.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import json
import math
import types
import typing
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import LimitError, SdmcError

GiB = 2**30


@dataclass(frozen=True)
class Limits:
    """Resource limits on what a file may ask for (each generous for real use, far below what breaks a machine).

    ``snn_steps`` 256: SDDPM/SDM use T = 4 or 8, a converted b-bit QANN T = 2**b - 1 <= 255 (``bits`` <= 8).
    ``img_size`` 1024: CIFAR-10 32, CelebA 64, LSUN 256; a 10**5 header asked 240 GB.  ``ch`` 1024 (released
    models 128), ``ch_mult`` entries <= 16 and at most 8 levels, ``num_res_blocks`` <= 16, ``img_ch`` <= 16.
    ``diffusion_steps`` 10000: the papers use 1000, cosine/DDPM variants up to 4000; 10**9 asked 8 GB.
    ``params`` 2**30 (4 GiB of float32): the CIFAR SDM UNet has 60 M, the largest DDPM UNets about 550 M.
    ``graph_nodes`` 100000: a traced CIFAR SDM UNet has about 1000.  ``graph_elements`` 2**37: the values of
    one sample over all nodes and steps (CIFAR SDM at T=8: about 1e9; CelebA 64x64 at T=64: about 3e10).
    ``graph_json_bytes`` 256 MiB (a CIFAR graph.json is under 1 MB); ``weights_bytes`` 8 GiB (``params``
    in float64 twice over).  ``npz_bytes`` 4 GiB of decoded images: 50000 CIFAR images are 150 MB and 50000
    256x256 RGB ones 9.8 GB, which ``sdmc eval`` reads in chunks; ``image_side`` 1024 as ``img_size``.
    ``meta_json_bytes`` 16 MiB for JSON in file headers (a config is about 1 kB).  ``stats_bytes`` 256 MiB for
    FID reference statistics (``mu`` and ``sigma`` of 2048 Inception features: 32 MiB).
    """

    snn_steps: int = 256
    bits: int = 8
    img_size: int = 1024
    img_ch: int = 16
    ch: int = 1024
    ch_mult: int = 16
    levels: int = 8
    num_res_blocks: int = 16
    diffusion_steps: int = 10_000
    params: int = 2**30
    graph_nodes: int = 100_000
    graph_elements: int = 2**37
    graph_json_bytes: int = 256 * 2**20
    weights_bytes: int = 8 * GiB
    npz_bytes: int = 4 * GiB
    image_side: int = 1024
    meta_json_bytes: int = 16 * 2**20
    stats_bytes: int = 256 * 2**20


LIMITS = Limits()


def check_limit(what: str, asked: int | float, limit: int | float, unit: str = "", err: type = LimitError) -> None:
    """Raise ``err`` (a :class:`LimitError` by default) when ``asked > limit``, saying both."""
    if asked > limit:
        raise err(f"{what}: {_fmt(asked)}{unit} asked, the limit is {_fmt(limit)}{unit}")


def _fmt(v: int | float) -> str:
    if isinstance(v, int) and abs(v) >= 10**6:
        return f"{v:,}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def nbytes(n: int) -> str:
    """``n`` bytes, readably (``3.0 GiB``)."""
    for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------------------- typed fields
def spec(
    default: Any = dataclasses.MISSING,
    *,
    range: tuple[float | None, float | None] | None = None,  # noqa: A002 - the natural name in field specs
    choices: Iterable[Any] | None = None,
    length: tuple[int, int] | None = None,
    open_low: bool = False,
    open_high: bool = False,
    limit: bool = False,
    **kw: Any,
) -> Any:
    """A dataclass field whose value :func:`check_fields` bounds: ``range`` ``(lo, hi)`` (``None``: unbounded;
    ``open_low`` / ``open_high``: that end excluded) for numbers and for every element of a tuple, ``choices``
    for any value, ``length`` ``(lo, hi)`` for tuples.  ``limit``: ``hi`` is a resource limit (exceeding it
    raises :class:`LimitError`, saying what was asked and the limit)."""
    meta = dict(kw.pop("metadata", {}) or {})
    if range is not None:
        meta.update(range=range, open_low=open_low, open_high=open_high, limit=limit)
    if choices is not None:
        meta["choices"] = tuple(choices)
    if length is not None:
        meta["length"] = length
    return dataclasses.field(default=default, metadata=meta, **kw)


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a (dataclass) class, cached."""
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {plural.get(args[0], _type_name(args[0]))}"
        if len(set(args)) == 1 and args[0] in plural:
            return f"a list of {len(args)} {plural[args[0]]}"
        return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    names = {
        int: "an integer",
        float: "a number",
        bool: "true/false",
        str: "a string",
        dict: "an object",
        list: "a list",
    }
    return names.get(origin or tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def coerce(value: Any, tp: Any) -> Any:
    """``value`` as the annotation ``tp`` wants it, or :class:`_Mismatch`.  JSON forms are accepted: a list for a
    tuple, an integral float for an int; a bool is never a number; floats must be finite."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _Mismatch
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise _Mismatch
    if tp is int:
        if isinstance(value, (bool, np.bool_)):
            raise _Mismatch
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _Mismatch
        if not math.isfinite(float(value)):
            raise _Mismatch
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(coerce(v, a) for v, a in zip(value, args))
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        return [coerce(v, args[0]) for v in value] if args else list(value)
    if origin is dict or tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation this layer does not know (a forward reference, a Protocol): the class checks it


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(value: Any, tp: Any, meta: Mapping[str, Any], where: str, err: type = SdmcError) -> Any:
    """``value`` checked against the annotation ``tp`` and a field's :func:`spec` metadata; returns it coerced."""
    try:
        value = coerce(value, tp)
    except _Mismatch:
        raise err(f"{where}: expected {_type_name(tp)}, got {_short(value)}") from None
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise err(f"{where}: {_short(value)} is not one of {', '.join(map(repr, choices))}")
    length = meta.get("length")
    if length is not None and isinstance(value, tuple) and not length[0] <= len(value) <= length[1]:
        raise err(f"{where}: needs {length[0]} to {length[1]} entries, got {len(value)}")
    rng = meta.get("range")
    if rng is not None:
        lo, hi = rng
        items = value if isinstance(value, tuple) else (value,)
        for v in items:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if lo is not None and (v <= lo if meta.get("open_low") else v < lo):
                raise err(f"{where}: must be {'>' if meta.get('open_low') else '>='} {lo}, got {_short(value)}")
            if hi is not None and (v >= hi if meta.get("open_high") else v > hi):
                if meta.get("limit"):
                    raise LimitError(f"{where}: {_fmt(v)} asked, the limit is {_fmt(hi)}")
                raise err(f"{where}: must be {'<' if meta.get('open_high') else '<='} {hi}, got {_short(value)}")
    return value


def parse_json(text: str | bytes, where: str, err: type = SdmcError, limit: int = LIMITS.meta_json_bytes) -> Any:
    """``json.loads`` of a file's JSON text, bounded in size (and nesting: Python's recursion limit), with one
    ``err`` line for anything malformed."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise err(f"{where}: expected JSON text, got {type(text).__name__}")
    check_limit(f"{where}: JSON size", len(text), limit, " bytes")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise err(f"{where} is not valid JSON: {e}") from None
    except RecursionError:
        raise err(f"{where} is not valid JSON: nested too deeply") from None


def check_fields(obj: Any, where: str, err: type = SdmcError) -> None:
    """Check (and coerce, in place) every field of the dataclass instance ``obj`` against its annotation and
    :func:`spec` metadata; ``where`` prefixes the field name in messages (``model.ch: expected an integer``)."""
    hints = type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name not in hints or not f.init:
            continue
        value = check_value(getattr(obj, f.name), hints[f.name], f.metadata, f"{where}.{f.name}", err)
        object.__setattr__(obj, f.name, value)  # works on frozen dataclasses too


def known_fields(cls: type, d: Any, where: str, err: type = SdmcError, strict: bool = True) -> dict[str, Any]:
    """The entries of the JSON object ``d`` that name init fields of the dataclass ``cls``; with ``strict``
    an unknown entry is an error."""
    if not isinstance(d, Mapping):
        raise err(f"{where}: expected an object (a JSON dict), got {_short(d)}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - known)
    if unknown and strict:
        raise err(f"{where}: unknown field(s) {unknown}")
    return {k: v for k, v in d.items() if k in known}


# ---------------------------------------------------------------------------------------------- files
def read_member(z: zipfile.ZipFile, name: str, limit: int, where: str, err: type = SdmcError) -> bytes:
    """The bytes of zip member ``name``, refusing (before and while reading) more than ``limit`` bytes."""
    try:
        info = z.getinfo(name)
    except KeyError:
        raise err(f"{where}: zip lacks {name}") from None
    check_limit(f"{where}/{name}: uncompressed size", info.file_size, limit, " bytes", err=LimitError)
    with z.open(info) as fh:
        data = fh.read(limit + 1)  # the header may lie: never read past the limit
    check_limit(f"{where}/{name}: uncompressed size", len(data), limit, " bytes", err=LimitError)
    return data


def _npy_header(fh: Any, name: str, where: str, err: type) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(fh)
        shape, _, dtype = np.lib.format._read_array_header(fh, version)  # noqa: SLF001 - the header only
    except Exception as e:  # noqa: BLE001 - any malformed header
        raise err(f"{where}: {name}: not a valid .npy array ({e})") from None
    return tuple(int(s) for s in shape), dtype


def npy_members(path: str, where: str, err: type = SdmcError) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{array name: (shape, dtype)}`` of an ``.npz`` (or ``.npy``: one array named ``arr_0``) file, read from
    the ``.npy`` headers only: nothing the header sizes is allocated."""
    if str(path).endswith(".npy"):
        try:
            with open(path, "rb") as fh:
                return {"arr_0": _npy_header(fh, "array", where, err)}
        except OSError as e:
            raise err(f"{where}: cannot read: {e.strerror or e}") from None
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise err(f"{where}: not a readable .npz file ({e})") from None
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with z:
        for info in z.infolist():
            if info.filename.endswith(".npy"):
                try:
                    with z.open(info) as fh:
                        out[info.filename[: -len(".npy")]] = _npy_header(fh, f"member {info.filename}", where, err)
                except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
                    raise err(f"{where}: member {info.filename}: unreadable ({e})") from None
    return out


def check_arrays(
    path: str, where: str, limit: int, err: type = SdmcError
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """:func:`npy_members`, refusing (before loading) an array that takes more than ``limit`` bytes once converted
    to float32 (what image arrays become), saying its shape."""
    members = npy_members(path, where, err)
    for name, (shape, dtype) in members.items():
        need = math.prod(shape) * max(int(dtype.itemsize), 4)
        check_limit(f"{where}: array {name!r} of shape {list(shape)}", need, limit, " bytes")
    return members


_ALLOW_NONFINITE: contextvars.ContextVar[bool] = contextvars.ContextVar("sdmc_allow_nonfinite", default=False)


@contextlib.contextmanager
def allowing_nonfinite(allow: bool = True) -> Iterator[None]:
    """Within the body, loaders accept NaN/Inf weights (``sdmc --allow-nonfinite``, for debugging) unless a call
    says otherwise."""
    token = _ALLOW_NONFINITE.set(allow)
    try:
        yield
    finally:
        _ALLOW_NONFINITE.reset(token)


def check_finite(tensors: Mapping[str, Any], where: str, err: type = SdmcError, allow: bool | None = None) -> None:
    """Refuse the first floating tensor / array of ``tensors`` that holds NaN or Inf, naming it and the count.
    ``allow``: skip the check (``None``: as :func:`allowing_nonfinite` says, off by default)."""
    import torch

    if _ALLOW_NONFINITE.get() if allow is None else allow:
        return
    for key, v in tensors.items():
        if isinstance(v, torch.Tensor):
            if not v.is_floating_point() or v.numel() == 0:
                continue
            bad = int((~torch.isfinite(v)).sum())
        else:
            a = np.asarray(v)
            if a.dtype.kind not in "fc" or a.size == 0:
                continue
            bad = int((~np.isfinite(a)).sum())
        if bad:
            raise err(
                f"{where}: tensor {key!r} holds {bad} non-finite value(s) (NaN/Inf); "
                "refusing to use it (--allow-nonfinite loads it anyway, for debugging)"
            )
