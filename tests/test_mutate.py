"""The mutation-testing tool (tests/mutate.py) and its data (tests/mutation.toml) stay in step with the tree:
a moved file, a stale equivalent entry or a mutant that does not compile fails here, in CI."""

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mutate  # noqa: E402

CFG = mutate.load_config()


@pytest.mark.parametrize("target", CFG["target"], ids=[t["file"] for t in CFG["target"]])
def test_every_target_exists_and_imports_under_its_module_name(target):
    name = mutate.module_name(target["file"])
    spec = importlib.util.find_spec(name)
    assert spec is not None and Path(spec.origin).resolve() == (mutate.ROOT / target["file"]).resolve()
    for arg in target["tests"]:
        if arg.startswith("tests/"):
            assert (mutate.ROOT / arg.split("::")[0]).is_file(), arg


def test_module_names_follow_the_package_dir_mapping():
    assert mutate.module_name("backends/torch/kernels.py") == "sdmc.backends.torch.kernels"
    assert mutate.module_name("sim/golden.py") == "sdmc.sim.golden"
    assert mutate.module_name("sdmc/passes/__init__.py") == "sdmc.passes"


def test_every_equivalent_entry_names_a_current_mutant():
    files = {e["file"] for e in CFG.get("equivalent", [])}
    ms = [
        m
        for t in CFG["target"]
        if t["file"] in files
        for m in mutate.mutants_of(t["file"], t.get("skip", ()), CFG["swaps"])
    ]
    for e in CFG.get("equivalent", []):
        one = mutate.Equivalents([e])
        assert any(one.reason(m) for m in ms), f"stale [[equivalent]] entry (or its line_has): {e}"
        assert len(e["reason"]) > 20


def test_an_equivalent_entry_with_line_has_matches_only_its_line():
    """golden.pool2d has `-2 -> 2` on two lines: the padded count map (4-D, equivalent) and the window max
    (6-D: a different axis); only the first is listed."""
    eq = mutate.Equivalents(CFG["equivalent"])
    ms = [m for m in mutate.mutants_of("sim/golden.py", (), CFG["swaps"]) if m.scope == "pool2d" and m.old == "-2"]
    src = (mutate.ROOT / "sim/golden.py").read_text().splitlines()
    listed = {"sliding_window_view(ones" in src[m.line - 1]: eq.reason(m) is not None for m in ms if m.new == "(2)"}
    assert listed == {True: True, False: False}


def test_mutants_compile_and_change_one_thing():
    file = "backends/torch/kernels.py"
    src = (mutate.ROOT / file).read_bytes()
    ms = mutate.mutants_of(file, (), CFG["swaps"])
    assert {"comparison", "arithmetic", "drop-term", "constant", "call", "statement"} <= {m.kind for m in ms}
    assert any(m.old.startswith("torch.ge(h, threshold") and "torch.gt" in m.new for m in ms)
    # every mutant changes the source; one per kind and every 8th (a deterministic sample: parsing all ~400
    # copies of the file takes ~18 s) is valid Python
    first = {m.kind: m for m in reversed(ms)}.values()
    for i, m in enumerate(ms):
        out = m.apply(src)
        assert out != src
        if i % 8 == 0 or m in first:
            ast.parse(out)


SRC = """\
TABLE = [1, 2]


def f(x, k=3):
    if x > 0:
        return x + k
    return (
        -x
    )
"""


def _mutant(src: str, line: int, end_line: int | None = None) -> mutate.Mutant:
    return mutate.Mutant("m.py", line, 0, end_line or line, 1, "x", "y", "constant", "f")


def test_the_line_map_selects_the_tests_that_reach_a_line_in_run_order():
    ex = mutate.LineMap.executable_lines(SRC, "m.py")
    assert {1, 4, 5, 6, 7} <= ex and 2 not in ex  # line 2 is blank
    lm = mutate.LineMap(
        lines={1: [mutate.COLLECT], 4: [mutate.COLLECT], 5: ["t::b", "t::a"], 6: ["t::b"], 7: ["t::a"], 8: ["t::a"]},
        executable=ex,
        order=["t::b", "t::a", "t::c"],
    )
    assert lm.tests_for(_mutant(SRC, 5)) == ["t::b", "t::a"]  # the clean run's order, not the recorded one
    assert lm.tests_for(_mutant(SRC, 6)) == ["t::b"]
    assert lm.tests_for(_mutant(SRC, 7, 9)) == ["t::a"]  # a span: every line of it
    assert lm.tests_for(_mutant(SRC, 1)) is None  # runs at import: every test
    assert lm.tests_for(_mutant(SRC, 4)) is None  # the def line (defaults) runs at import
    assert lm.tests_for(_mutant(SRC, 2)) is None  # no executable line to go by: every test
    empty = mutate.LineMap(lines={1: [mutate.COLLECT], 4: [mutate.COLLECT]}, executable=ex, order=["t::a"])
    assert empty.tests_for(_mutant(SRC, 6)) == []  # executable, reached by no test: uncovered


def test_the_tracer_records_which_test_runs_which_line(tmp_path):
    """The tracer itself, on a file run outside and inside a test context."""
    path = tmp_path / "m.py"
    path.write_text(SRC)
    spec = importlib.util.spec_from_file_location("m_traced", path)
    mod = importlib.util.module_from_spec(spec)
    tracer = mutate._LineTracer(path)
    old = sys.gettrace()
    try:
        sys.settrace(tracer._call)
        spec.loader.exec_module(mod)  # import: outside any test

        class Item:
            nodeid = "t::neg"

        tracer.pytest_runtest_protocol(Item, None)
        mod.f(-1)
        tracer.pytest_runtest_logfinish("t::neg", None)
    finally:
        sys.settrace(old)
    assert tracer.lines[1] == {mutate.COLLECT} and tracer.lines[4] == {mutate.COLLECT}
    assert tracer.lines[5] == {"t::neg"} and 6 not in tracer.lines and tracer.order == ["t::neg"]
    assert "t::neg" in tracer.lines[7] or "t::neg" in tracer.lines[8]


def test_a_wide_fixtures_lines_count_for_every_test_that_uses_it(tmp_path):
    """A module-scoped fixture runs once, inside the first test's setup, and the second test reads its cached
    value: both are credited with the fixture's lines (a mutant there must run both, the second may be the one
    that sees it); a test without the fixture is not."""
    (tmp_path / "m.py").write_text("def f(x):\n    return x + 1\n")
    (tmp_path / "test_m.py").write_text(
        "import pytest\nimport m\n\n\n@pytest.fixture(scope='module')\ndef val():\n    return m.f(1)\n\n\n"
        "def test_a(val):\n    assert val > 0\n\n\ndef test_b(val):\n    assert val == 2\n\n\n"
        "def test_c():\n    pass\n"
    )
    script = (
        f"import sys, json\nsys.path[:0] = [{str(mutate.ROOT / 'tests')!r}, {str(tmp_path)!r}]\n"
        "import mutate, pytest\n"
        f"t = mutate._LineTracer({str(tmp_path / 'm.py')!r})\nt.start()\n"
        f"code = pytest.main([{str(tmp_path / 'test_m.py')!r}, '-q', '-p', 'no:cacheprovider'], plugins=[t])\n"
        "sys.settrace(None)\nprint(json.dumps(dict(code=int(code), lines={str(k): sorted(v) for k, v in t.by_test().items()})))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["code"] == 0, p.stdout
    assert out["lines"]["2"] == ["test_m.py::test_a", "test_m.py::test_b"], out


@pytest.mark.parametrize("mode", ["fork", pytest.param("no-fork", marks=pytest.mark.slow)])
def test_a_run_kills_what_a_test_sees_and_reports_what_none_sees(tmp_path, mode):
    """End to end, in both process modes: dropping q_sample's noise term is killed by the test of q_sample;
    against a test that never calls it the same mutant survives, is listed, and the exit code says so."""
    base = [sys.executable, str(mutate.ROOT / "tests" / "mutate.py"), "--files", "diffusion/schedule"]
    base += ["--lines", "61", "--kinds", "drop-term", "--max", "1"] + (["--no-fork"] if mode == "no-fork" else [])
    runs = {}
    for name, tests in [
        ("seen", "tests/test_diffusion_formulas.py::test_targets_are_the_defined_quantities"),
        ("unseen", "tests/test_mutate.py::test_module_names_follow_the_package_dir_mapping"),
    ]:
        out = tmp_path / f"{name}.json"
        p = subprocess.run(
            base + ["--tests", tests, "--json", str(out)], cwd=mutate.ROOT, capture_output=True, text=True, timeout=300
        )
        runs[name] = (p.returncode, json.loads(out.read_text()), p.stdout)
    code, res, text = runs["seen"]
    assert code == 0 and res["counts"]["killed"] >= 1 and res["counts"]["survived"] == 0, text
    # fork mode selects by the traced line map: the test's cases that reach q_sample ran, not "all tests"
    assert (res["results"][0]["tests"] == "all tests") == (mode == "no-fork"), text
    code, res, text = runs["unseen"]
    assert code == 1 and res["counts"]["survived"] == res["counts"]["killed"] + res["counts"]["survived"] >= 1, text
    assert "q_sample" in text and "survivors" in text
    # the test never reaches the line: with the map, that is known without running it
    assert res["results"][0]["outcome"] == ("uncovered" if mode == "fork" else "passed"), text


def test_lines_take_single_lines_ranges_and_lists_and_refuse_nonsense():
    assert mutate.parse_lines("60-80") == [(60, 80)]
    assert mutate.parse_lines("73, 136-140") == [(73, 73), (136, 140)]
    for bad in ("a-b", "80-60", "73,", "-5", "5-"):
        with pytest.raises(SystemExit, match="--lines"):
            mutate.parse_lines(bad)


def test_a_mutant_that_makes_every_test_skip_survives_but_a_clean_run_without_tests_is_a_config_error():
    """pytest's exit code 5 (nothing ran): after a mutant (say ``available()`` turned False, so a test module
    skips itself) no test noticed the change; for the clean run the target's test list is wrong."""
    some_mutant = object()
    assert mutate._outcome(5, ["tests/x.py"], some_mutant) == "skipped" and "skipped" in mutate.SURVIVED
    assert mutate._outcome(1, ["tests/x.py"], some_mutant) == "failed"
    with pytest.raises(SystemExit, match="no tests collected"):
        mutate._outcome(5, ["tests/x.py"])
