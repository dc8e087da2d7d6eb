"""The fixed layout installs frontends/, backends/ and sim/ as subpackages of sdmc."""

import pathlib
import subprocess
import sys

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = cfg["package-dir"]
    listed = set(cfg["packages"])
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            parts = [] if str(rel) == "." else list(rel.parts)
            name = ".".join([pkg] + parts)
            if not any(name.startswith(other + ".") for other in mapping if other != pkg and other.startswith(pkg)):
                found.add(name)
    assert found == listed, f"missing from pyproject: {sorted(found - listed)}; stale: {sorted(listed - found)}"


def test_subpackages_import_under_sdmc_and_no_generic_top_level_names():
    import sdmc.backends
    import sdmc.frontends
    import sdmc.sim

    assert pathlib.Path(sdmc.sim.__file__).parent == ROOT / "sim"
    assert pathlib.Path(sdmc.backends.__file__).parent == ROOT / "backends"
    assert pathlib.Path(sdmc.frontends.__file__).parent == ROOT / "frontends"
    out = subprocess.run([sys.executable, "-c", "import sim"], capture_output=True, cwd="/")
    assert out.returncode != 0


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "sdmc", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("info", "train", "sample", "compile", "energy", "export", "convert"):
        assert cmd in out.stdout
