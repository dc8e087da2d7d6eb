"""Install Lava (lava-nc 0.10.0, lava-dl 0.6.0) into the running interpreter, the sdmc way.

Both wheels declare ``Requires-Python <3.11`` and pin torch<2.4 (a CUDA build from PyPI), networkx<=2.8.7,
pillow<11, torchvision, opencv, ... — none of which the netx/simulation path needs.  So the wheels go in
with ``--no-deps --ignore-requires-python`` and only the few modules Lava really imports are installed with
ordinary version ranges.  The two source problems on Python 3.11 are fixed at import time by
:mod:`sdmc.backends.lava.compat` (no installed file is edited).

Usage (idempotent; CI runs it once after ``pip install -e .[dev]``)::

    python -m sdmc.backends.lava.install            # install + verify
    python -m sdmc.backends.lava.install --check    # only verify, exit 1 if Lava is not usable

Never let pip resolve lava's own requirements afterwards (``pip install lava-dl`` without ``--no-deps``
would replace the CPU torch by CUDA torch 2.3).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

LAVA_WHEELS = ("lava-nc==0.10.0", "lava-dl==0.6.0")
# What lava's netx + CPU simulation path imports, with ranges compatible with sdmc's own pins.
LAVA_RUNTIME_DEPS = (
    "numpy>=1.24,<2",
    "scipy>=1.10.1,<2",
    "h5py>=3.7,<4",
    "networkx>=2.8,<4",
    "asteval>=0.9.31,<0.10",
    "matplotlib>=3.5.2,<4",
)

_VERIFY = (
    "import sdmc.backends.lava.compat as c; c.install_import_fixes(); "
    "import lava.lib.dl.netx, lava.lib.dl.slayer, lava.magma.core.run_configs; "
    "print('lava ok', c.lava_versions())"
)


def pip_commands(python: str = sys.executable) -> list[list[str]]:
    """The two pip invocations, in order (deps with normal resolution, then the wheels without deps)."""
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    return [pip + list(LAVA_RUNTIME_DEPS), pip + ["--no-deps", "--ignore-requires-python", *LAVA_WHEELS]]


def verify(python: str = sys.executable) -> bool:
    """Import netx in a fresh interpreter with sdmc's import-time fixes; True on success."""
    r = subprocess.run([python, "-c", _VERIFY], capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-4000:])
    return r.returncode == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdmc.backends.lava.install", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify that Lava imports; install nothing")
    ap.add_argument("--dry-run", action="store_true", help="print the pip commands and exit")
    args = ap.parse_args(argv)
    if args.dry_run:
        for cmd in pip_commands():
            print(" ".join(cmd))
        return 0
    if not args.check:
        t0 = time.time()
        for cmd in pip_commands():
            print("+", " ".join(cmd), flush=True)
            r = subprocess.run(cmd)
            if r.returncode != 0:
                print(f"lava install: pip failed with status {r.returncode}: {' '.join(cmd)}", file=sys.stderr)
                return r.returncode
        print(f"lava install: pip done in {time.time() - t0:.1f} s", flush=True)
    return 0 if verify() else 1


if __name__ == "__main__":
    sys.exit(main())
