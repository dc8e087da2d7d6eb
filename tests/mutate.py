"""Mutation testing of sdmc's semantic core: make one small change to the code, run the tests that guard it,
and report the changes no test notices (survivors).

    python tests/mutate.py                          # every target of tests/mutation.toml (hours)
    python tests/mutate.py --max 40 --seed 3        # a random sample of 40 mutants (what fits a coffee break)
    python tests/mutate.py --files golden,kernels   # only targets whose path contains one of these
    python tests/mutate.py --list --files energy    # print the mutants, run nothing
    python tests/mutate.py --files kernels --lines 109 --tests tests/test_threshold_ties.py   # does my test kill it?
    make mutate ARGS="--max 40"                     # the same, niced

What to mutate and which tests guard it is data (``tests/mutation.toml``): when a file moves, edit the path
there.  Each mutant is one change of one AST node (source position kept, so line numbers stay right):

    comparison      <  <=  >  >=  ==  !=  is  in  swapped (< <-> <=, > <-> >=, == <-> !=, ...)
    arithmetic      + <-> -,  * <-> /,  // -> /,  % -> //,  ** -> *,  & <-> |,  << <-> >>  (also in +=, -=, ...)
    drop a term     a + b -> a,  a - b -> a,  a * b -> a
    unary           -x -> x,  not x -> x
    constant        0 -> 1, 1 -> 0, n -> n + 1 (ints);  x -> x + 1 (floats);  True <-> False
    boolean         and <-> or
    call            a function swapped for its twin (the [swaps] table: torch.ge -> torch.gt, max -> min, ...)
    statement       a call statement (``v.masked_fill_(m, r)``, an in-place update) replaced by ``pass``

Not mutated: strings, docstrings, annotations, ``raise``/``assert`` statements, lines marked
``# pragma: no mutate``, and the functions/classes a target lists under ``skip`` (presentation code).

How a mutant runs: the mutated file is written to a temporary folder and a fresh ``python -m pytest`` (with
``-x``; ``CI=1`` and the ``mutate`` hypothesis profile of ``tests/conftest.py``, so hypothesis replays the same
examples, keeps no example database and does not shrink a failure) imports it *in place of* the original module via an
import hook; the working tree is never modified, so an interrupted run leaves nothing behind.  Tests that start
their own Python (CLI subprocesses, DDP workers) see the original code.  A mutant is *killed* when a test fails,
errors or the run exceeds the time limit (``timeout_factor`` x the clean run + ``timeout_slack_s``); it
*survives* when every test passes.

Which tests a mutant runs (fork mode): the clean run of a target's tests is traced once, recording which test
executes which line of the file (:class:`LineMap`).  A mutant then runs only the tests that execute its lines:
the tests are deterministic (``CI=1``), so a test that never reaches a line in the clean run runs exactly the same
with that line changed and cannot kill it.  A mutant on a line that runs at import (module level, a default
argument, a table built at import) runs every test; one on an executable line no test reaches survives without
running anything (outcome ``uncovered``).  A test that starts another process sees the original code either way.
``--no-select`` runs every test for every mutant; ``--confirm`` re-runs each survivor against every test.  Survivors listed under ``[[equivalent]]`` with a reason (a change that
cannot alter behaviour) are reported as equivalent, not as survivors.  Score = killed / (killed + survived).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import fnmatch
import importlib.abc
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path(__file__).resolve().parent / "mutation.toml"

CMP_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BIN_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}
DROP_TERM = (ast.Add, ast.Sub, ast.Mult)


@dataclasses.dataclass
class Mutant:
    """One change: replace source span ``(line, col)..(end_line, end_col)`` (1-based lines, UTF-8 byte
    columns, as ``ast`` reports them) by ``new``.  ``scope`` is the enclosing function/class path."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    old: str
    new: str
    kind: str
    scope: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity that survives unrelated edits (no line numbers): file, scope, old and new code."""
        return (self.file, self.scope, self.old, self.new)

    def describe(self) -> str:
        return f"{self.file}:{self.line} [{self.scope}] {self.old}  ->  {self.new}"

    def apply(self, src: bytes) -> bytes:
        lines = src.splitlines(keepends=True)
        head = b"".join(lines[: self.line - 1]) + lines[self.line - 1][: self.col]
        tail = lines[self.end_line - 1][self.end_col :] + b"".join(lines[self.end_line :])
        return head + self.new.encode() + tail


# ------------------------------------------------------------------------------------------- generation
class _Collector(ast.NodeVisitor):
    def __init__(self, file: str, src: str, skip: set[str], swaps: dict[str, str]) -> None:
        self.file, self.skip, self.swaps = file, skip, swaps
        self.lines = src.splitlines()
        self.scope: list[str] = []
        self.out: list[Mutant] = []

    # ---- helpers
    def _emit(self, node: ast.AST, new: ast.AST | str, kind: str, stmt: bool = False) -> None:
        if "pragma: no mutate" in self.lines[node.lineno - 1]:
            return
        old = ast.unparse(node)
        text = new if isinstance(new, str) else ast.unparse(new)
        if text == old:
            return
        if not stmt:
            text = f"({text})"
        self.out.append(
            Mutant(
                self.file,
                node.lineno,
                node.col_offset,
                node.end_lineno,
                node.end_col_offset,
                old,
                text,
                kind,
                ".".join(self.scope) or "<module>",
            )
        )

    def _scoped(self, node, name: str) -> None:
        if name in self.skip:
            return
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    # ---- scopes and skipped subtrees
    def visit_FunctionDef(self, node):
        for d in node.args.defaults + node.args.kw_defaults:  # defaults are semantics, annotations are not
            if d is not None:
                self.visit(d)
        for d in node.decorator_list:
            self.visit(d)
        if node.name in self.skip:
            return
        self.scope.append(node.name)
        for s in node.body:
            self.visit(s)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._scoped(node, node.name)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_Raise(self, node):
        pass

    def visit_Assert(self, node):
        pass

    def visit_JoinedStr(self, node):
        pass

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant):  # docstring / bare string
            return
        if isinstance(node.value, ast.Call):
            self._emit(node, "pass", "statement", stmt=True)
        self.generic_visit(node)

    # ---- expressions
    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            if type(op) in CMP_SWAP:
                m = copy.deepcopy(node)
                m.ops[i] = CMP_SWAP[type(op)]()
                self._emit(node, m, "comparison")
        self.generic_visit(node)

    def visit_BinOp(self, node):
        if type(node.op) in BIN_SWAP:
            m = copy.deepcopy(node)
            m.op = BIN_SWAP[type(node.op)]()
            self._emit(node, m, "arithmetic")
        if isinstance(node.op, DROP_TERM):
            self._emit(node, node.left, "drop-term")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        if type(node.op) in BIN_SWAP:
            m = copy.deepcopy(node)
            m.op = BIN_SWAP[type(node.op)]()
            self._emit(node, ast.unparse(m), "arithmetic", stmt=True)
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.USub, ast.Not)):
            self._emit(node, node.operand, "unary")
        if not (isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)):
            self.generic_visit(node)

    def visit_BoolOp(self, node):
        m = copy.deepcopy(node)
        m.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._emit(node, m, "boolean")
        self.generic_visit(node)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            self._emit(node, repr(not v), "constant")
        elif isinstance(v, int):
            self._emit(node, repr({0: 1, 1: 0}.get(v, v + 1)), "constant")
        elif isinstance(v, float):
            self._emit(node, repr(v + 1.0), "constant")

    def visit_Call(self, node):
        name = ast.unparse(node.func)
        if name in self.swaps:
            m = copy.deepcopy(node)
            m.func = ast.parse(self.swaps[name], mode="eval").body
            self._emit(node, m, "call")
        self.generic_visit(node)


_SOURCES: dict[str, bytes] = {}  # each file as read when its mutants were made (edits during a run don't shift them)


def mutants_of(file: str, skip=(), swaps=None) -> list[Mutant]:
    """Every mutant of ``file`` (a path relative to the repository root)."""
    _SOURCES[file] = (ROOT / file).read_bytes()
    src = _SOURCES[file].decode()
    c = _Collector(file, src, set(skip), dict(swaps or {}))
    c.visit(ast.parse(src))
    return c.out


# ---------------------------------------------------------------------------------------------- running
def module_name(file: str) -> str:
    """The import name of ``file`` under pyproject's ``[tool.setuptools] package-dir`` mapping."""
    pkg_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    p = Path(file).with_suffix("")
    best = None
    for pkg, d in pkg_dirs.items():
        dp = Path(d)
        if p.parts[: len(dp.parts)] == dp.parts and (best is None or len(dp.parts) > len(Path(best[1]).parts)):
            best = (pkg, d)
    if best is None:
        raise SystemExit(f"mutate: {file} is not under any package-dir of pyproject.toml")
    rest = p.parts[len(Path(best[1]).parts) :]
    if rest and rest[-1] == "__init__":
        rest = rest[:-1]
    return ".".join((best[0],) + rest)


class _Swap(importlib.abc.MetaPathFinder):
    """Import hook of the child process: module ``name`` comes from the mutated file."""

    def __init__(self, name: str, path: str, orig: str) -> None:
        self.name, self.path, self.orig = name, path, orig

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        pkg = [str(Path(self.orig).parent)] if Path(self.orig).name == "__init__.py" else None
        return importlib.util.spec_from_file_location(fullname, self.path, submodule_search_locations=pkg)


def _child(argv: list[str]) -> int:
    """``mutate.py _run MODULE MUTATED ORIGINAL -- PYTEST-ARGS``: run pytest with the module swapped."""
    name, path, orig, sep, *pytest_args = argv
    assert sep == "--"
    sys.dont_write_bytecode = True
    sys.meta_path.insert(0, _Swap(name, path, orig))

    return int(pytest.main(pytest_args))


# Third-party modules the fork server imports once, so that a mutant's pytest process starts warm (importing
# torch alone takes ~2 s of a killed mutant's ~5 s).  Never sdmc: every mutant must import sdmc afresh.
WARM_MODULES = ("numpy", "scipy", "torch", "torch.nn.functional", "pytest", "hypothesis", "spikingjelly")
_WARM = False


def _warm_up() -> None:
    """Import :data:`WARM_MODULES` into this (the parent) process once; the forked test runs inherit them."""
    global _WARM
    if _WARM:
        return
    os.environ.update(CI="1", PYTHONDONTWRITEBYTECODE="1", SDMC_HYPOTHESIS_PROFILE="mutate")
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional dependency missing is fine: the child imports what it needs
            pass
    if any(m == "sdmc" or m.startswith("sdmc.") for m in sys.modules):
        raise SystemExit("mutate: the fork server imported sdmc; mutants would run against the original code")
    _WARM = True


def _in_fork(body: Callable[[], int], timeout: float | None) -> tuple[int | None, float]:
    """Fork the warm parent and run ``body`` in the child (output to /dev/null, cwd the repository, no bytecode
    written); its return value is the child's exit code, any crash 3.  Returns (exit code or None on timeout,
    seconds)."""
    _warm_up()
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(ROOT)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            sys.dont_write_bytecode = True
            code = int(body())
        except BaseException:  # noqa: BLE001 - any crash of the test run is an error outcome
            code = 3
        finally:
            os._exit(code)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), time.monotonic() - t0
            if timeout is not None and time.monotonic() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None, time.monotonic() - t0
            time.sleep(0.02)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def _run_forked(
    args: list[str], mutant_path: Path | None, mutant: Mutant | None, timeout: float | None
) -> tuple[int | None, float]:
    """Run pytest in a fork of the warm parent, the mutated module (if any) swapped in; returns (exit code or
    None on timeout, seconds)."""

    def body() -> int:
        if mutant is not None:
            sys.meta_path.insert(0, _Swap(module_name(mutant.file), str(mutant_path), str(ROOT / mutant.file)))

        return pytest.main(args)

    return _in_fork(body, timeout)


def _run_subprocess(
    args: list[str], mutant_path: Path | None, mutant: Mutant | None, timeout: float | None
) -> tuple[int | None, float]:
    """Run pytest in a fresh Python (the module swapped in by ``mutate.py _run``); returns (exit code or None on
    timeout, seconds)."""
    if mutant is None:
        cmd = [sys.executable, "-m", "pytest", *args]
    else:
        name = module_name(mutant.file)
        cmd = [sys.executable, str(Path(__file__).resolve()), "_run", name, str(mutant_path), str(ROOT / mutant.file)]
        cmd += ["--", *args]
    env = dict(os.environ, CI="1", PYTHONDONTWRITEBYTECODE="1", SDMC_HYPOTHESIS_PROFILE="mutate")
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t0
    return p.returncode, time.monotonic() - t0


# ------------------------------------------------------------------------------------------- line map
COLLECT = "<import>"  # the context of lines that run outside any test: imports, collection, module-level code


class _LineTracer:
    """A pytest plugin and a ``sys.settrace`` tracer in one: records which test (node id) executes which line of
    one file.  Lines executed outside a test (module import during collection) are recorded under
    :data:`COLLECT`.  Frames of other files are not traced line by line (only their call event costs).

    A fixture wider than one test (module, class, session scope) runs once, inside the setup of the first test
    that asks for it, and later tests read its cached value: the lines it executes are recorded under the
    fixture and credited to every test that uses it (:meth:`by_test`), not to the first one alone.  (A cache in
    the code under test, an ``lru_cache``, shares work between tests the same way and is not seen: ``--confirm``
    re-runs each survivor against every test.)"""

    def __init__(self, path: Path) -> None:
        self.path = os.path.realpath(path)
        self.context = COLLECT
        self.lines: dict[int, set[str]] = {}
        self.order: list[str] = []  # node ids in the order they ran
        self.shared: dict[str, set[str]] = {}  # wide fixture -> the node ids that use it
        self._is_target: dict[str, bool] = {}

    @staticmethod
    def _fixture(fixturedef) -> str:
        return f"<fixture {fixturedef.baseid}::{fixturedef.argname}>"

    def _call(self, frame, event, arg):
        f = frame.f_code.co_filename
        hit = self._is_target.get(f)
        if hit is None:
            hit = self._is_target[f] = os.path.realpath(f) == self.path
        return self._line if hit else None

    def _line(self, frame, event, arg):
        if event == "line":
            self.lines.setdefault(frame.f_lineno, set()).add(self.context)
        return self._line

    def start(self) -> None:
        import threading

        threading.settrace(self._call)
        sys.settrace(self._call)

    def pytest_runtest_protocol(self, item, nextitem):  # pytest hook (a plain one: the context is set first)
        self.context = item.nodeid
        self.order.append(item.nodeid)
        info = getattr(item, "_fixtureinfo", None)
        for name in getattr(info, "names_closure", ()):
            defs = info.name2fixturedefs.get(name) or ()
            if defs and defs[-1].scope != "function":
                self.shared.setdefault(self._fixture(defs[-1]), set()).add(item.nodeid)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):  # pytest hook: a wide fixture's lines are its own
        if fixturedef.scope == "function":
            yield
            return
        outer, self.context = self.context, self._fixture(fixturedef)
        try:
            yield
        finally:
            self.context = outer

    def pytest_runtest_logfinish(self, nodeid, location):  # pytest hook
        self.context = COLLECT

    def by_test(self) -> dict[int, set[str]]:
        """The recorded lines, each wide fixture's context replaced by the tests that use the fixture."""
        return {
            line: {t for c in ctx for t in (self.shared.get(c, ()) if c.startswith("<fixture ") else (c,))}
            for line, ctx in self.lines.items()
        }


@dataclasses.dataclass
class LineMap:
    """Which tests execute which line of one file (from a traced clean run), and which lines can execute at all
    (the lines of the file's compiled code objects).  :meth:`tests_for` is the test selection of a mutant."""

    lines: dict[int, list[str]]
    executable: set[int]
    order: list[str]  # node ids in the order the clean run ran them

    @staticmethod
    def executable_lines(src: str, filename: str) -> set[int]:
        out: set[int] = set()
        todo = [compile(src, filename, "exec")]
        while todo:
            code = todo.pop()
            out.update(line for _, _, line in code.co_lines() if line is not None)
            todo.extend(c for c in code.co_consts if hasattr(c, "co_lines"))
        return out

    def tests_for(self, m: Mutant) -> list[str] | None:
        """The node ids that execute one of ``m``'s lines, in run order; ``None``: run every test (a line that
        runs at import, or a span with no executable line to go by); ``[]``: no test reaches it."""
        span = range(m.line, m.end_line + 1)
        seen: set[str] = set()
        for line in span:
            seen.update(self.lines.get(line, ()))
        if COLLECT in seen or not any(line in self.executable for line in span):
            return None
        rank = {t: i for i, t in enumerate(self.order)}
        return sorted(seen, key=rank.__getitem__)


def trace_clean_run(tests: list[str], file: str) -> tuple[str, float, LineMap | None]:
    """The clean run of ``tests`` in a fork, traced: (outcome, seconds, the file's :class:`LineMap`)."""
    args = [*tests, *PYTEST_FLAGS]
    with tempfile.TemporaryDirectory(prefix="sdmc-trace-") as tmp:
        out = Path(tmp) / "lines.json"

        def body() -> int:

            tracer = _LineTracer(ROOT / file)
            tracer.start()
            code = int(pytest.main(args, plugins=[tracer]))
            sys.settrace(None)
            lines = {str(k): sorted(v) for k, v in tracer.by_test().items()}
            out.write_text(json.dumps(dict(lines=lines, order=tracer.order)))
            return code

        code, dt = _in_fork(body, None)
        if code != 0 or not out.exists():
            return _outcome(code, tests), dt, None
        raw = json.loads(out.read_text())
    src = _SOURCES.get(file) or (ROOT / file).read_bytes()
    lines = {int(k): v for k, v in raw["lines"].items()}
    lmap = LineMap(lines, LineMap.executable_lines(src.decode(), str(ROOT / file)), raw["order"])
    return "passed", dt, lmap


SURVIVED = ("passed", "uncovered", "skipped")  # a mutant's outcomes that mean no test noticed it
PYTEST_FLAGS = ("-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--no-header", "-W", "ignore")


def _outcome(code: int | None, tests: list[str], mutant: Mutant | None = None) -> str:
    if code is None:
        return "timeout"
    if code == 0:
        return "passed"
    if code == 1:
        return "failed"
    if code == 5 and mutant is not None:
        return "skipped"  # the mutant made every test skip itself (a module-level skip): nothing noticed it
    if code == 5:
        raise SystemExit(f"mutate: no tests collected by {tests}; fix tests/mutation.toml")
    return "error"  # collection/import error: the mutant broke the module (killed)


def run_tests(tests: list[str], mutant: Mutant | None, timeout: float | None, fork: bool = False) -> tuple[str, float]:
    """Run ``tests`` (pytest arguments) against ``mutant`` (None: the clean code).  Returns (outcome, seconds),
    outcome one of passed / failed / timeout / error, or skipped (a mutant after which no test ran).
    ``fork``: run pytest in a fork of this process after importing torch & co once (:data:`WARM_MODULES`)
    instead of a fresh Python (same outcome, ~2-3x faster)."""
    args = [*tests, *PYTEST_FLAGS]
    with tempfile.TemporaryDirectory(prefix="sdmc-mutant-") as tmp:
        path = None
        if mutant is not None:
            src = _SOURCES.get(mutant.file) or (ROOT / mutant.file).read_bytes()
            path = Path(tmp) / Path(mutant.file).name
            path.write_bytes(mutant.apply(src))
        code, dt = (_run_forked if fork else _run_subprocess)(args, path, mutant, timeout)
    return _outcome(code, tests, mutant), dt


class Equivalents:
    """The ``[[equivalent]]`` list.  A mutant matches an entry by file, scope, old and new code and, when the
    entry gives ``line_has``, by that text on the mutated line: a short ``old`` such as a constant can occur
    on several lines of one function, and only one of them may be equivalent."""

    def __init__(self, entries: list[dict]) -> None:
        self.entries = entries
        self._lines: dict[str, list[str]] = {}

    def reason(self, m: Mutant) -> str | None:
        for e in self.entries:
            if (e["file"], e["scope"], e["old"], e["new"]) != m.key:
                continue
            if "line_has" in e:
                if m.file not in self._lines:
                    self._lines[m.file] = (ROOT / m.file).read_text().splitlines()
                if e["line_has"] not in self._lines[m.file][m.line - 1]:
                    continue
            return e["reason"]
        return None


def load_config(path: Path = CONFIG) -> dict:
    cfg = tomllib.loads(path.read_text())
    for t in cfg.get("target", []):
        if not (ROOT / t["file"]).is_file():
            raise SystemExit(f"mutate: {path.name}: target file {t['file']} does not exist (moved? update it)")
    return cfg


def parse_lines(spec: str) -> list[tuple[int, int]]:
    """``"60-80"``, ``"73"`` or a comma-separated list of them -> inclusive ``(lo, hi)`` spans."""
    spans = []
    for part in spec.split(","):
        lo, dash, hi = part.strip().partition("-")
        hi = hi if dash else lo
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise SystemExit(f"mutate: --lines {spec!r}: expected N, N-M or a comma-separated list of them")
        spans.append((int(lo), int(hi)))
    return spans


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_run"]:
        return _child(argv[1:])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # subprocess.run kills the running mutant on exit
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", help="comma-separated substrings/globs of target paths (default: all targets)")
    ap.add_argument("--max", type=int, default=None, help="run a random sample of at most N mutants")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--kinds", help="comma-separated mutant kinds (comparison, arithmetic, drop-term, ...)")
    ap.add_argument("--lines", help="only mutants starting in these lines, e.g. 60-80 or 73,136-140 (with one --files)")
    ap.add_argument("--tests", help="pytest arguments to run instead of the targets' tests (a new test: does it kill?)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--show-equivalent", action="store_true", help="print the equivalent mutants and their reasons")
    ap.add_argument(
        "--no-fork",
        action="store_true",
        help="start a fresh Python per mutant instead of forking a warm one (slower; for platforms without fork)",
    )
    ap.add_argument(
        "--no-select", action="store_true", help="run every test of the target for every mutant (no line map)"
    )
    ap.add_argument("--confirm", action="store_true", help="re-run each survivor against every test of its target")
    ap.add_argument("--json", type=Path, default=ROOT / "runs" / "mutate" / "last.json", help="where to write results")
    args = ap.parse_args(argv)

    cfg = load_config()
    settings = cfg.get("settings", {})
    swaps = cfg.get("swaps", {})
    equivalent = Equivalents(cfg.get("equivalent", []))
    targets = cfg["target"]
    if args.tests:
        targets = [dict(t, tests=args.tests.split()) for t in targets]
    if args.files:
        pats = [p.strip() for p in args.files.split(",") if p.strip()]
        targets = [t for t in targets if any(p in t["file"] or fnmatch.fnmatch(t["file"], p) for p in pats)]
        if not targets:
            raise SystemExit(f"mutate: no target matches --files {args.files}")
    if args.show_equivalent:
        for e in equivalent.entries:
            where = f" (line has {e['line_has']!r})" if "line_has" in e else ""
            print(f"{e['file']} [{e['scope']}] {e['old']} -> {e['new']}{where}\n    {e['reason']}")
        return 0

    pool: list[tuple[dict, Mutant]] = []
    for t in targets:
        for m in mutants_of(t["file"], t.get("skip", ()), swaps):
            pool.append((t, m))
    if args.kinds:
        kinds = set(args.kinds.split(","))
        pool = [(t, m) for t, m in pool if m.kind in kinds]
    if args.lines:
        spans = parse_lines(args.lines)
        pool = [(t, m) for t, m in pool if any(lo <= m.line <= hi for lo, hi in spans)]
    total = len(pool)
    if args.max is not None and args.max < len(pool):
        pool = random.Random(args.seed).sample(pool, args.max)
        pool.sort(key=lambda tm: (tm[1].file, tm[1].line, tm[1].col))
    if args.list:
        for _, m in pool:
            tag = "  (equivalent)" if equivalent.reason(m) is not None else ""
            print(f"{m.kind:11s} {m.describe()}{tag}")
        print(f"{len(pool)} of {total} mutants")
        return 0

    fork = hasattr(os, "fork") and not args.no_fork
    select = fork and not args.no_select
    print(f"mutate: {len(pool)} of {total} mutants in {len(targets)} target file(s)", flush=True)
    factor, slack = float(settings.get("timeout_factor", 3.0)), float(settings.get("timeout_slack_s", 60))
    clean: dict[str, float] = {}
    maps: dict[str, LineMap | None] = {}
    results = []
    counts = dict(killed=0, survived=0, equivalent=0, selection_missed=0)
    for i, (t, m) in enumerate(pool, 1):
        reason = equivalent.reason(m)
        if reason is not None:
            counts["equivalent"] += 1
            results.append(dict(dataclasses.asdict(m), outcome="equivalent", reason=reason))
            print(f"[{i}/{len(pool)}] equivalent  {m.describe()}", flush=True)
            continue
        if t["file"] not in clean:
            if select:
                outcome, dt, maps[t["file"]] = trace_clean_run(t["tests"], t["file"])
            else:
                (outcome, dt), maps[t["file"]] = run_tests(t["tests"], None, None, fork), None
            if outcome != "passed":
                raise SystemExit(f"mutate: the clean tests of {t['file']} do not pass ({outcome}): {t['tests']}")
            clean[t["file"]] = dt
            lm = maps[t["file"]]
            how = f" (traced: {len(lm.order)} tests, {len(lm.lines)} lines reached)" if lm else ""
            print(f"clean run of {t['file']}'s tests: {dt:.1f} s{how}", flush=True)
        timeout = factor * clean[t["file"]] + slack
        lm = maps[t["file"]]
        chosen = lm.tests_for(m) if lm else None
        if chosen == []:
            outcome, dt = "uncovered", 0.0
        else:
            outcome, dt = run_tests(chosen or t["tests"], m, timeout, fork)
        missed = False
        if outcome in SURVIVED and args.confirm and chosen is not None:
            outcome, dt2 = run_tests(t["tests"], m, timeout, fork)
            dt, chosen, missed = dt + dt2, None, outcome not in SURVIVED
            counts["selection_missed"] += missed
        status = "SURVIVED" if outcome in SURVIVED else "killed"
        counts["survived" if outcome in SURVIVED else "killed"] += 1
        ran = "all tests" if chosen is None else f"{len(chosen)} test{'s' * (len(chosen) != 1)}"
        results.append(dict(dataclasses.asdict(m), outcome=outcome, tests=ran, selection_missed=missed))
        note = "  (killed only by a test the selection left out)" if missed else ""
        print(f"[{i}/{len(pool)}] {status:8s} ({outcome}, {ran}, {dt:.0f} s)  {m.describe()}{note}", flush=True)

    tried = counts["killed"] + counts["survived"]
    score = counts["killed"] / tried if tried else 1.0
    survivors = [r for r in results if r["outcome"] in SURVIVED]
    print(f"\nmutation score {100 * score:.1f}%: {counts['killed']} killed, {counts['survived']} survived, ", end="")
    print(f"{counts['equivalent']} equivalent (of {total} mutants; {len(pool)} sampled, seed {args.seed})")
    if survivors:
        print("\nsurvivors (add a test that fails on each, or list it in [[equivalent]] with the reason):")
        for r in survivors:
            why = {"uncovered": "  (no test reaches it)", "skipped": "  (every test skipped itself)"}.get(
                r["outcome"], ""
            )
            print(f"  {r['file']}:{r['line']} [{r['scope']}] {r['old']}  ->  {r['new']}{why}")
            print(
                f'    [[equivalent]] file = "{r["file"]}"  scope = "{r["scope"]}"  '
                f"old = {json.dumps(r['old'])}  new = {json.dumps(r['new'])}"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(dict(score=score, counts=counts, total=total, results=results), indent=1))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
