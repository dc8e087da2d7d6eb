"""How sdmc writes its outputs: atomic files, crash-safe directory replacement, ownership and locks.

Rules every writer follows (issue 15):

- a file appears whole or not at all (:func:`atomic_path`: written beside, fsynced, renamed into place); files
  that belong together (an image grid and its ``.npz``) are all written before the first is renamed
  (:func:`atomic_paths`); an output never overwrites an input of the run (:func:`refuse_input_as_output`);
- an artefact directory (a ``.sdmc`` graph directory, a Loihi export) is replaced whole only if sdmc wrote it
  (its manifest is there, :func:`is_sdmc_artefact`) or it is empty, unless the caller forces it; an input of
  the run is never inside what gets replaced, forced or not (:func:`check_replaceable`);
- a run directory that commands write into (``sample``/``demo``/``train --out``) is used only if sdmc created it
  (:data:`MARKER` inside, or a known sdmc file), is empty or new, unless forced (:func:`claim_dir`);
- the replacement is crash-safe at every instant (:func:`atomic_dir`): the new tree is written beside the old
  one and swapped in by one ``renameat2(RENAME_EXCHANGE)`` (Linux), so ``path`` always names a complete tree;
  elsewhere by two renames, the old tree being put back by the next run if a crash fell between them; the
  next run also removes the hidden ``.NAME.sdmc-*.tmp`` / ``.old`` leftovers of a crashed one (:func:`recover`);
- one writer per output at a time: :func:`output_lock` holds an advisory lock (``flock``) on ``.NAME.lock``
  beside the output; a second writer gets an :class:`~sdmc.errors.OutputError` instead of a silent mix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .errors import OutputError

MARKER = ".sdmc-output"  # written into every run directory sdmc creates (claim_dir)
# the manifest each kind of artefact directory starts with: file name -> bytes found in its first 4 KiB
ARTEFACT_MANIFESTS = {"graph.json": b'"ir_version"', "manifest.json": b'"sdmc-loihi-net"'}
# files that mark a run directory of an sdmc version from before MARKER (a training run, a finished demo)
RUN_FILES = ("train_config.json", "summary.json")
_HEAD_BYTES = 4096


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. not permitted on this platform: durability only, not correctness
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same directory as ``path``; move it into place only on success.

    A crash (or exception) in the body leaves any previous file at ``path`` untouched and removes the
    temporary file, so readers never see a half-written file.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """:func:`atomic_path` for files that belong together (an image grid and its ``.npz``): every file is
    written and fsynced to its temporary path before the first one is renamed into place, so an exception
    leaves all the old files and a crash can only fall between the renames (microseconds)."""
    finals = [Path(p) for p in paths]
    for p in finals:
        if p.is_dir():
            raise OutputError(f"{p}: is a directory, expected a file name")
        p.parent.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    tmps: list[Path] = []
    try:
        for p in finals:
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
            os.close(fd)
            tmps.append(Path(tmp))
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        yield tuple(tmps)
        for tmp in tmps:
            _fsync_file(tmp)
        for tmp, p in zip(tmps, finals):
            os.replace(tmp, p)
        for parent in {p.parent for p in finals}:
            _fsync_dir(parent)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as a safetensors file atomically, the same bytes for the same tensors and metadata.

    safetensors' own writer emits the header's ``__metadata__`` map in hash-map order, which changes from
    call to call, so two saves of one model could differ byte for byte (and a file's hash with them).  Here
    the header is re-emitted as compact JSON with sorted keys and padded with spaces to 8 bytes, as the format
    asks; the tensor data and its offsets are safetensors' own (its order is fixed: by dtype, then name).
    """
    import json

    from safetensors.torch import save

    blob = save(tensors, metadata=dict(metadata) if metadata else None)
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # the data written from the blob, not copied again
        fh.write(len(header).to_bytes(8, "little"))
        fh.write(header)
        fh.write(memoryview(blob)[8 + n :])
    return Path(path)


def safe_name(name: str, what: str = "--name") -> str:
    """``name`` if it is a plain file name (no directory part, not ``.``/``..``, no NUL), else an error: an
    output name must stay inside its output directory."""
    if not name or name in (".", "..") or "/" in name or "\0" in name or (os.sep != "/" and os.sep in name):
        raise OutputError(f"{what} {name!r}: must be a plain file name (no '/', not '.' or '..')")
    if os.altsep and os.altsep in name:
        raise OutputError(f"{what} {name!r}: must be a plain file name")
    return name


def refuse_input_as_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """An error if the output file ``out`` is one of ``inputs`` (writing it would destroy the input)."""
    out = Path(out)
    if not out.exists():
        return
    for src in inputs:
        if src is not None and Path(src).exists() and os.path.samefile(src, out):
            raise OutputError(f"{out}: is the input {src}; choose another output name")


def check_file_replaceable(
    path: str | os.PathLike,
    owned: Callable[[Path], bool],
    *,
    force: bool = False,
    protect: Iterable[str | os.PathLike | None] = (),
) -> None:
    """An :class:`OutputError` unless file output ``path`` may be written: it is none of ``protect`` (the run's
    inputs; forced or not), not a directory, and either absent or a file sdmc wrote (``owned(path)``, e.g. an
    ONNX model whose producer is sdmc); ``force`` waives only the last condition."""
    path = Path(path)
    refuse_input_as_output(path, protect)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory, expected a file name")
    if not os.path.lexists(path) or force or owned(path):
        return
    raise OutputError(f"{path}: exists and was not written by sdmc; choose another name or pass --force to replace it")


@contextlib.contextmanager
def replace_file(
    path: str | os.PathLike,
    owned: Callable[[Path], bool],
    *,
    force: bool = False,
    protect: Iterable[str | os.PathLike | None] = (),
) -> Iterator[Path]:
    """Write file output ``path`` through a temporary path (:func:`atomic_path`) under :func:`output_lock`, if
    :func:`check_file_replaceable` allows it once locked (callers also check before their work, to fail early)."""
    with output_lock(path):
        check_file_replaceable(path, owned, force=force, protect=protect)
        with atomic_path(path) as tmp:
            yield tmp


# ---------------------------------------------------------------------------------------------- locks
def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside it (outside, so a directory swap keeps it)."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an advisory exclusive lock on output ``path`` for the body; another sdmc process writing the same
    output meanwhile gets an :class:`OutputError` at once (no waiting, no mix of two runs).  The lock dies with
    the process (``flock``), so a killed run never leaves a stale lock; the lock file is removed on release
    (a writer that opened it just before checks, once locked, that the file it holds is still the lock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory locks
        yield
        return
    lp = lock_path(path)
    lp.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(
                    f"{path}: another sdmc process is writing this output (lock {lp} held); "
                    "wait for it to finish or choose another output"
                ) from None
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lp))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file we locked: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lp)
        os.close(fd)


# ----------------------------------------------------------------------------------------- directories
def _head_has(path: Path, signature: bytes) -> bool:
    with open(path, "rb") as fh:
        return signature in fh.read(_HEAD_BYTES)


def is_sdmc_artefact(path: str | os.PathLike) -> bool:
    """Whether directory ``path`` is an artefact sdmc wrote: it holds one of :data:`ARTEFACT_MANIFESTS`."""
    path = Path(path)
    return any((path / n).is_file() and _head_has(path / n, sig) for n, sig in ARTEFACT_MANIFESTS.items())


def is_sdmc_run_dir(path: str | os.PathLike) -> bool:
    """Whether directory ``path`` is a run directory sdmc created (:data:`MARKER`, or a :data:`RUN_FILES`)."""
    path = Path(path)
    return any((path / n).is_file() for n in (MARKER, *RUN_FILES))


def _has_files(path: Path) -> bool:
    """Whether directory ``path`` holds anything besides the lock files of sdmc writers (:func:`output_lock`)."""
    return any(not (p.name.startswith(".") and p.name.endswith(".lock")) for p in path.iterdir())


def check_run_dir(path: str | os.PathLike, *, force: bool = False) -> None:
    """An :class:`OutputError` unless ``path`` may hold a run's outputs (see :func:`claim_dir`); creates nothing."""
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory")
    if path.is_dir() and not force and not is_sdmc_run_dir(path) and _has_files(path):
        raise OutputError(
            f"{path}: exists, is not empty and was not created by sdmc (no {MARKER} in it); "
            "choose another directory or pass --force to write into it"
        )


def claim_dir(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Make ``path`` a directory to write a run's outputs into: created (with :data:`MARKER`) if missing,
    marked if empty, accepted if sdmc made it (:func:`is_sdmc_run_dir`); an existing non-empty directory sdmc
    did not create is an :class:`OutputError` unless ``force`` (which writes into it but does not mark it)."""
    path = Path(path)
    check_run_dir(path, force=force)
    if path.is_dir() and _has_files(path):
        return path
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path / MARKER, "created by sdmc: sdmc commands may write their outputs here\n")
    return path


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_replaceable(
    path: str | os.PathLike, *, force: bool = False, protect: Iterable[str | os.PathLike | None] = ()
) -> None:
    """An :class:`OutputError` unless artefact directory ``path`` may be replaced: it does not exist, is empty,
    or is an sdmc artefact (``force`` waives only this last condition); it is not a file; and no path of
    ``protect`` (the run's inputs) is ``path`` or inside it, forced or not."""
    path = Path(path)
    for src in protect:
        if src is not None and _inside(Path(src), path):
            raise OutputError(f"{path}: holds the input {src}; writing the output there would delete it")
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise OutputError(f"{path}: exists and is not a directory")
    if force or is_sdmc_artefact(path) or not any(path.iterdir()):
        return
    raise OutputError(
        f"{path}: exists, is not empty and is not an sdmc output (no {' or '.join(ARTEFACT_MANIFESTS)} of sdmc "
        "in it); choose another directory or pass --force to replace it"
    )


def _leftovers(path: Path) -> tuple[list[Path], list[Path]]:
    """The hidden temporary (``.tmp``) and moved-aside (``.old``) trees of earlier :func:`atomic_dir` runs."""
    # tempfile's 8 random characters; "sdmc-" since issue 15, without it from the atomic_dir before
    pat = re.compile(rf"\.{re.escape(path.name)}\.(?:sdmc-)?[a-z0-9_]{{8}}\.(tmp|old)")
    tmps, olds = [], []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pat.fullmatch(p.name)
            if m and p.is_dir() and not p.is_symlink():
                (tmps if m.group(1) == "tmp" else olds).append(p)
    return tmps, olds


def recover(path: str | os.PathLike) -> None:
    """Undo what a crashed :func:`atomic_dir` left beside ``path`` (call it holding :func:`output_lock`).

    A ``.old`` tree with no ``path`` is the previous output moved aside by the two-rename fallback just before
    the crash: it is put back.  Every other leftover is garbage: a ``.tmp`` tree is a new tree that was never
    swapped in (or, after an exchange, the old tree being deleted), a ``.old`` tree beside an existing ``path``
    was being deleted."""
    path = Path(path)
    tmps, olds = _leftovers(path)
    if olds and not os.path.lexists(path):
        newest = max(olds, key=lambda p: p.stat().st_mtime)
        os.rename(newest, path)
        olds.remove(newest)
    for p in tmps + olds:
        shutil.rmtree(p, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` when the
    platform or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, force: bool = False, protect: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it replaces ``path`` (an artefact sdmc
    wrote, an empty directory, or nothing; see :func:`check_replaceable` for ``force`` and ``protect``).

    Crash-safe at every instant: ``path`` names the complete old tree until one exchange (or, without
    ``renameat2``, two renames that the next run repairs, :func:`recover`) makes it name the complete new
    one; the caller writes the artefact's manifest (:data:`ARTEFACT_MANIFESTS`).  On an exception the
    temporary tree is removed and ``path`` is untouched.  The whole replacement holds :func:`output_lock`.
    """
    path = Path(path)
    protect = list(protect)
    check_replaceable(path, force=force, protect=protect)  # early: before the caller's work
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path):
        recover(path)
        check_replaceable(path, force=force, protect=protect)  # again: recovery may have restored a tree
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.sdmc-", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            for p in tmp.rglob("*"):
                if p.is_file() and not p.is_symlink():
                    _fsync_file(p)
            _fsync_dir(tmp)
            if os.path.lexists(path) and _exchange(tmp, path):
                _fsync_dir(path.parent)
                shutil.rmtree(tmp, ignore_errors=True)  # now the old tree; a crash here leaves a .tmp to clean
                return
            old = None
            if os.path.lexists(path):
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.sdmc-", suffix=".old", dir=path.parent))
                old.rmdir()
                os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                if old is not None and not os.path.lexists(path):
                    os.rename(old, path)
                raise
            _fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
