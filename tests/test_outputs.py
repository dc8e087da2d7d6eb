"""sdmc.utils: how outputs are written (issue 15).  Crash safety is tested by killing a real process at the
worst moments (SIGKILL: no cleanup runs) and checking what the next run finds and repairs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from sdmc.errors import OutputError
from sdmc.utils import (
    MARKER,
    atomic_dir,
    atomic_paths,
    check_replaceable,
    claim_dir,
    output_lock,
    recover,
    safe_name,
)


def _artefact(path, text="old"):
    """A directory as sdmc's graph writer leaves it (graph.json is its manifest)."""
    path.mkdir()
    (path / "graph.json").write_text(json.dumps({"ir_version": 1, "x": text}))
    return path


def _tree(path):
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def test_atomic_dir_replaces_an_artefact_and_leaves_nothing_beside_it(tmp_path):
    out = _artefact(tmp_path / "g")
    with atomic_dir(out) as tmp:
        (tmp / "graph.json").write_text(json.dumps({"ir_version": 1, "x": "new"}))
    assert json.loads((out / "graph.json").read_text())["x"] == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["g"]


def test_atomic_dir_refuses_foreign_or_protected_directories(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not an sdmc output.*--force"):
        with atomic_dir(mine):
            pass
    assert _tree(mine) == {"thesis.tex": "years of work"}
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:  # an empty directory holds nothing to lose
        (tmp / "a").write_text("a")
    src = _artefact(tmp_path / "art") / "model.pt"
    src.write_text("weights")
    for force in (False, True):
        with pytest.raises(OutputError, match="holds the input"):
            check_replaceable(tmp_path / "art", force=force, protect=[src])
        with pytest.raises(OutputError, match="holds the input"):
            check_replaceable(tmp_path, force=force, protect=[src])
    with pytest.raises(OutputError, match="not a directory"):
        check_replaceable(src)
    with atomic_dir(mine, force=True) as tmp:
        (tmp / "b").write_text("b")
    assert _tree(mine) == {"b": "b"}


def test_an_exception_keeps_the_old_tree(tmp_path):
    out = _artefact(tmp_path / "g")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "graph.json").write_text("half")
            raise RuntimeError("disk full")
    assert json.loads((out / "graph.json").read_text())["x"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["g"]


_KILL = """
import json, os, signal, sys
from pathlib import Path
import sdmc.utils as u
out = Path(sys.argv[1])
where = sys.argv[2]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
if where == "between-renames":  # the fallback without renameat2: die after moving the old tree aside
    u._exchange = lambda a, b: False
    real = os.rename
    def rename(a, b):
        real(a, b)
        if str(b).endswith(".old"):
            die()
    u.os.rename = rename
if where == "after-exchange":  # die while deleting the swapped-out old tree
    u.shutil.rmtree = lambda *a, **k: die()
with u.atomic_dir(out) as tmp:
    (tmp / "graph.json").write_text(json.dumps({"ir_version": 1, "x": "new"}))
    (tmp / "big").write_text("y" * 100000)
    if where == "writing":
        die()
"""


@pytest.mark.parametrize("where", ["writing", "between-renames", "after-exchange"])
def test_a_killed_replacement_leaves_a_whole_tree_and_the_next_run_repairs(tmp_path, where):
    out = _artefact(tmp_path / "g")
    (out / "weights").write_text("old weights")
    r = subprocess.run([sys.executable, "-c", _KILL, str(out), where], capture_output=True)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("g", ".g.lock"))
    assert leftovers and all(p.startswith(".g.sdmc-") for p in leftovers), leftovers
    if where == "after-exchange":  # the swap happened in one step: the new tree is complete
        assert json.loads((out / "graph.json").read_text())["x"] == "new" and (out / "big").stat().st_size == 100000
    elif where == "writing":
        assert _tree(out) == {"graph.json": json.dumps({"ir_version": 1, "x": "old"}), "weights": "old weights"}
    else:  # between the two renames of the fallback: 'g' is missing, the old tree waits in .g.sdmc-*.old
        assert not out.exists()
    with output_lock(out):  # what the next atomic_dir(out) does first
        recover(out)
    assert [p.name for p in tmp_path.iterdir()] == ["g"]
    x = json.loads((out / "graph.json").read_text())["x"]
    assert x == ("new" if where == "after-exchange" else "old")
    if x == "old":
        assert (out / "weights").read_text() == "old weights"


def test_leftovers_of_the_previous_atomic_dir_naming_are_cleaned(tmp_path):
    out = _artefact(tmp_path / "g")
    (tmp_path / ".g.abcd1234.tmp").mkdir()  # hidden trees of the atomic_dir before issue 15
    (tmp_path / ".g.efgh5678.old").mkdir()
    (tmp_path / ".g.b.abcd1234.tmp").mkdir()  # another output's: left alone
    with atomic_dir(out) as tmp:
        (tmp / "graph.json").write_text(json.dumps({"ir_version": 1}))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".g.b.abcd1234.tmp", "g"]


def test_output_lock_refuses_a_second_writer_and_vanishes(tmp_path):
    out = tmp_path / "o"
    code = textwrap.dedent(
        f"""
        from sdmc.utils import output_lock
        from sdmc.errors import OutputError
        try:
            with output_lock({str(out)!r}):
                print("got it")
        except OutputError as e:
            print("refused:", e)
        """
    )
    with output_lock(out):
        assert (tmp_path / ".o.lock").exists()
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert r.stdout.startswith("refused:") and "another sdmc process" in r.stdout
    assert list(tmp_path.iterdir()) == []
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "got it"


def test_a_killed_lock_holder_does_not_block_the_next_run(tmp_path):
    out = tmp_path / "o"
    code = f"import os, signal\nfrom sdmc.utils import output_lock\nwith output_lock({str(out)!r}):\n"
    code += "    os.kill(os.getpid(), signal.SIGKILL)\n"
    assert subprocess.run([sys.executable, "-c", code]).returncode == -signal.SIGKILL
    assert (tmp_path / ".o.lock").exists()  # the file stays, the lock died with the process
    with output_lock(out):
        pass


def test_atomic_paths_write_a_pair_or_nothing(tmp_path):
    a, b = tmp_path / "x.png", tmp_path / "x.npz"
    a.write_text("old png")
    b.write_text("old npz")
    with pytest.raises(RuntimeError):
        with atomic_paths(a, b) as (ta, tb):
            ta.write_text("new png")
            raise RuntimeError("the npz failed")
    assert (a.read_text(), b.read_text()) == ("old png", "old npz")
    with atomic_paths(a, b) as (ta, tb):
        ta.write_text("new png")
        tb.write_text("new npz")
    assert (a.read_text(), b.read_text()) == ("new png", "new npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz", "x.png"]


def test_claim_dir_and_safe_name(tmp_path):
    d = claim_dir(tmp_path / "new")
    assert (d / MARKER).is_file()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "f").write_text("f")
    with pytest.raises(OutputError, match="not created by sdmc"):
        claim_dir(tmp_path / "foreign")
    assert claim_dir(tmp_path / "foreign", force=True) and not (tmp_path / "foreign" / MARKER).exists()
    (tmp_path / "oldrun").mkdir()
    (tmp_path / "oldrun" / "train_config.json").write_text("{}")  # a training run from before the marker
    claim_dir(tmp_path / "oldrun")
    for bad in ("../x", "a/b", "..", ".", "", "a\0b"):
        with pytest.raises(OutputError):
            safe_name(bad)
    assert safe_name("ddim_50") == "ddim_50"
