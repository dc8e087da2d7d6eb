"""The command line as a package: the explicit command list, the shared option groups, the library helpers
the commands call instead of their own numerics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdmc.cli import COMMANDS, build_parser, main
from sdmc.cli.base import SOLVERS


def test_every_command_is_listed_once_and_parses_its_help(capsys):
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))
    for name in names:
        assert main([name, "--help"]) == 0
        assert "usage: sdmc " + name in capsys.readouterr().out


def test_solver_choices_are_the_library_solvers():
    from sdmc.diffusion.solvers import SOLVER_NAMES

    assert tuple(SOLVERS) == tuple(SOLVER_NAMES)


def test_help_does_not_import_torch():
    code = "import sys; from sdmc.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_shared_groups_give_every_model_command_the_same_options():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("sample", "eval", "energy", "compile", "export", "sim", "analytic-stats"):
        opts = {s for a in sub[name]._actions for s in a.option_strings}
        assert {"--weights", "--snn-steps", "--unsafe-load"} <= opts, name
    for name in ("sample", "eval", "energy", "analytic-stats", "demo"):
        opts = {s for a in sub[name]._actions for s in a.option_strings}
        assert "--device" in opts, name


def test_noised_inputs_use_the_graphs_noise_schedule(monkeypatch):
    """sim.inputs.noised_inputs draws x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the NoiseSchedule the
    graph records (here 100 cosine steps, not a hand-made copy of the default linear betas); a step outside the
    schedule is one clear error, not silently clamped."""
    import sdmc.data
    from sdmc.config import DiffusionConfig, ModelConfig
    from sdmc.diffusion.schedule import NoiseSchedule
    from sdmc.errors import SdmcError
    from sdmc.frontends import trace
    from sdmc.models import SpikingUNet
    from sdmc.sim.inputs import noised_inputs

    cfg = ModelConfig(arch="sddpm", ch=8, ch_mult=(1,), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    graph = trace(SpikingUNet(cfg).eval(), (1, 1, 8, 8))
    dcfg = DiffusionConfig(num_timesteps=100, schedule="cosine")
    graph.meta["sdmc_config"] = {"diffusion": dcfg.to_dict()}

    def no_digits(*a, **k):
        raise OSError("no dataset here")

    monkeypatch.setattr(sdmc.data, "load_dataset", no_digits)  # x0 falls back to uniform noise
    got = noised_inputs(graph, 5, 70, seed=3)
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, (5, 1, 8, 8))
    abar = float(NoiseSchedule(dcfg).alphas_cumprod[70])
    want = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * rng.standard_normal(x0.shape)
    np.testing.assert_allclose(got["x"], want, rtol=0, atol=1e-12)
    assert got["t"].tolist() == [70] * 5
    with pytest.raises(SdmcError, match=r"t=100 is outside the schedule's 0\.\.99"):
        noised_inputs(graph, 1, 100)


# ------------------------------------------------------------------------ issue 15: one line, exit 2
def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


@pytest.mark.parametrize(
    "argv, option",
    [
        (["sample", "m.pt", "--steps", "0"], "--steps"),
        (["sample", "m.pt", "-n", "0"], "--num"),
        (["sample", "m.pt", "--batch-size", "0"], "--batch-size"),
        (["sample", "m.pt", "--threshold", "-1"], "--threshold"),
        (["sample", "m.pt", "--eta", "3"], "--eta"),
        (["sample", "m.pt", "--snn-steps", "0"], "--snn-steps"),
        (["energy", "m.pt", "--threshold", "0"], "--threshold"),
        (["energy", "m.pt", "--threshold", "-1"], "--threshold"),
        (["energy", "m.pt", "--batch-size", "0"], "--batch-size"),
        (["energy", "m.pt", "--assume-rate", "1.5"], "--assume-rate"),
        (["energy", "m.pt", "--threshold", "nan"], "--threshold"),
        (["convert", "m.pt", "-o", "x", "--batch-size", "0"], "--batch-size"),
        (["convert", "m.pt", "-o", "x", "--calibrate", "-1"], "--calibrate"),
        (["train", "--dropout", "2"], "--dropout"),
        (["train", "--num-timesteps", "0"], "--num-timesteps"),
        (["train", "--batch-size", "0"], "--batch-size"),
        (["train", "--snn-steps", "0"], "--snn-steps"),
        (["train", "--img-size", "0"], "--img-size"),
        (["train", "--beta-1", "5"], "--beta-1"),
        (["train", "--ch-mult", "1,0"], "--ch-mult"),
        (["compile", "m.pt", "-o", "x", "--snn-steps", "0"], "--snn-steps"),
        (["compile", "m.pt", "-o", "x", "--img-size", "0"], "--img-size"),
        (["export", "m.pt", "-o", "x", "--calib", "-1"], "--calib"),
        (["export", "m.pt", "-o", "x", "--host-bits", "40"], "--host-bits"),
        (["sim", "m.pt", "--samples", "0"], "--samples"),
        (["lava", "run", "f.h5", "--steps", "0"], "--steps"),
        (["lava", "run", "f.h5", "--steps", "-2"], "--steps"),
        (["lava", "run", "f.h5", "--samples", "0"], "--samples"),
        (["lava", "run", "f.h5", "--density", "2"], "--density"),
        (["eval", "--samples", "s.npz", "--batch-size", "0"], "--batch-size"),
        (["demo", "--steps", "0"], "--steps"),
        (["analytic-stats", "m.pt", "--budget", "0"], "--budget"),
        (["inherit-tsm", "m.pt", "-o", "x", "--snn-steps", "0"], "--snn-steps"),
    ],
)
def test_out_of_range_options_are_one_line_errors_naming_the_option(argv, option, tmp_path, capsys, monkeypatch):
    """No option silently falls back to a default or is accepted out of range: the parser refuses it (exit 2,
    one line naming the option), before any file is read or written."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, option)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "m.pt"],
        ["energy", "m.pt"],
        ["eval", "m.pt"],
        ["train"],
        ["analytic-stats", "m.pt"],
        ["demo"],
    ],
)
def test_missing_cuda_is_one_clear_error(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--device", "cuda"]) == 2
    _one_line_error(capsys, "--device cuda", "CUDA is not available")
    assert main([*argv, "--device", "gpu7"]) == 2
    _one_line_error(capsys, "--device 'gpu7'", "not a device")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written (demo/train folders)


# --------------------------------------------------------------------- issue 15: the last line of defence
def _sddpm_file(path):
    import torch

    from sdmc.checkpoint import save_model
    from sdmc.config import ModelConfig, SdmcConfig
    from sdmc.models import SpikingUNet

    cfg = ModelConfig(arch="sddpm", ch=8, ch_mult=(1,), num_res_blocks=1, snn_steps=2, img_ch=1, img_size=8)
    torch.manual_seed(0)
    save_model(path, SpikingUNet(cfg), SdmcConfig(model=cfg))
    return path


def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys):
    src = _sddpm_file(tmp_path / "m.safetensors")
    (tmp_path / "afile").write_text("not a folder")
    assert main(["inherit-tsm", str(src), "-o", str(tmp_path / "afile" / "out.safetensors")]) == 2
    _one_line_error(capsys, str(tmp_path / "afile"))
    (tmp_path / "adir").mkdir()
    assert main(["energy", str(src), "--data", "noise", "--images", "2", "-o", str(tmp_path / "adir")]) == 2
    _one_line_error(capsys, str(tmp_path / "adir"))
    assert (tmp_path / "afile").read_text() == "not a folder" and list((tmp_path / "adir").iterdir()) == []


def test_unexpected_errors_are_one_line_with_a_pointer_to_debug(tmp_path, capsys, monkeypatch):
    import sdmc.checkpoint

    def broken(*a, **k):
        raise ZeroDivisionError("a bug\nover two lines")

    monkeypatch.setattr(sdmc.checkpoint, "describe", broken)
    assert main(["info", str(tmp_path / "m.pt")]) == 1
    line = _one_line_error(capsys, "ZeroDivisionError", "a bug over two lines", "--debug")
    assert line.startswith("sdmc info: internal error")
    with pytest.raises(ZeroDivisionError):  # --debug: the traceback, before or after the command name
        main(["--debug", "info", str(tmp_path / "m.pt")])
    with pytest.raises(ZeroDivisionError):
        main(["info", str(tmp_path / "m.pt"), "--debug"])


@pytest.mark.parametrize(
    "exc",
    [
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                     "tried to allocate 6027214848 bytes. Error code 12 (Cannot allocate memory)"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
    ],
    ids=["MemoryError", "torch-cpu", "torch-cuda"],
)  # fmt: skip
def test_out_of_memory_is_a_user_error_in_one_line(tmp_path, capsys, monkeypatch, exc):
    """sdmc train --img-size 1024 on a small machine: torch's allocator raises a RuntimeError, not MemoryError."""
    import sdmc.checkpoint

    def too_big(*a, **k):
        raise exc

    monkeypatch.setattr(sdmc.checkpoint, "describe", too_big)
    assert main(["info", str(tmp_path / "m.pt")]) == 2
    assert _one_line_error(capsys, "out of memory", "--batch-size").startswith("sdmc info: error:")


# ------------------------------------------------------------ issue 15: outputs never destroy what they did not create
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return _sddpm_file(tmp_path_factory.mktemp("model") / "m.safetensors")


def test_compile_directory_refuses_a_foreign_folder_unless_forced(model_file, tmp_path, capsys):
    out = tmp_path / "graph"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["compile", str(model_file), "-o", str(out)]) == 2
    _one_line_error(capsys, str(out), "--force")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert main(["compile", str(model_file), "-o", str(out), "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "graph.json").is_file()
    capsys.readouterr()
    # sdmc's own graph directory is replaced without --force, and nothing is left beside it
    assert main(["compile", str(model_file), "-o", str(out), "--passes", "none"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph"]


def test_the_input_is_never_inside_what_gets_replaced(model_file, tmp_path, capsys):
    import shutil

    d = tmp_path / "run"
    d.mkdir()
    src = Path(shutil.copy(model_file, d / "m.safetensors"))
    before = src.read_bytes()
    for argv in (["compile", str(src), "-o", str(d)], ["export", str(src), "-o", str(d)]):
        for force in ([], ["--force"]):
            assert main(argv + force) == 2
            _one_line_error(capsys, "holds the input", str(src))
            assert src.read_bytes() == before
    assert main(["compile", str(src), "-o", str(tmp_path)]) == 2  # a parent of the input, too
    _one_line_error(capsys, "holds the input")
    assert main(["inherit-tsm", str(src), "-o", str(src)]) == 2  # a file output over its own input
    _one_line_error(capsys, "is the input")
    assert src.read_bytes() == before


def test_sample_name_stays_inside_out_and_out_is_sdmcs(model_file, tmp_path, capsys):
    common = ["sample", str(model_file), "--steps", "2", "-n", "2", "--no-progress", "--eager"]
    for name in ("../../x", "a/b", "..", "."):
        assert main([*common, "--out", str(tmp_path / "s"), "--name", name]) == 2
        _one_line_error(capsys, "--name", "plain file name")
    assert not (tmp_path / "s").exists() and not (tmp_path.parent / "x.png").exists()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "ddim_2.png").write_bytes(b"my picture")
    assert main([*common, "--out", str(foreign)]) == 2
    _one_line_error(capsys, str(foreign), "--force")
    assert (foreign / "ddim_2.png").read_bytes() == b"my picture"
    # a folder sdmc created is reused; the PNG and the .npz of a run are written as a pair
    assert main([*common, "--out", str(tmp_path / "s")]) == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [".sdmc-output", "ddim_2.npz", "ddim_2.png"]
    assert main([*common, "--out", str(tmp_path / "s"), "--seed", "1"]) == 0
    with np.load(tmp_path / "s" / "ddim_2.npz") as z:
        assert int(z["seed"]) == 1


def test_a_second_writer_of_one_output_gets_an_error(model_file, tmp_path, capsys):
    from sdmc.utils import output_lock

    out = tmp_path / "graph"
    with output_lock(out):  # another sdmc process (a lock is per open file, so this process counts too)
        assert main(["compile", str(model_file), "-o", str(out)]) == 2
        _one_line_error(capsys, "another sdmc process is writing", str(out))
        assert not out.exists()
        common = ["sample", str(model_file), "--steps", "2", "-n", "1", "--no-progress", "--eager"]
        (tmp_path / "s").mkdir()
        with output_lock(tmp_path / "s" / "ddim_2"):
            assert main([*common, "--out", str(tmp_path / "s")]) == 2
            _one_line_error(capsys, "another sdmc process is writing")
            assert main([*common, "--out", str(tmp_path / "s"), "--name", "other"]) == 0  # another pair: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the lock files are gone with their locks


def test_train_options_reach_the_config(tmp_path, monkeypatch, capsys):
    """--lr-decay N (and its neighbours) become the TrainConfig fields train() runs with; a negative N is refused."""
    import sdmc.diffusion.train as tr

    seen = []
    monkeypatch.setattr(tr, "train", lambda cfg: seen.append(cfg) or cfg.out)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--steps", "40", "--lr-decay", "15", "--warmup", "5", "--lr", "1e-3"]
    assert main(argv) == 0
    (cfg,) = seen
    assert (cfg.lr_decay, cfg.warmup, cfg.steps, cfg.lr) == (15, 5, 40, 1e-3)
    factor = [tr.lr_factor(s, cfg.warmup, cfg.steps, cfg.lr_decay) for s in (25, 30, 40)]
    assert factor == [1.0, 10 / 15, 0.0]  # constant until the last 15 steps, then down to 0
    assert main(["train", "--out", str(out), "--lr-decay", "-1"]) == 2
    _one_line_error(capsys, "--lr-decay")


def _commands_with_out(p=None, prefix=()):
    """Every (sub)command whose parser has -o/--out, as its argv prefix."""
    import argparse

    p = p or build_parser()
    found = [prefix] if any(a.dest == "out" for a in p._actions) else []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, q in a.choices.items():
                found += _commands_with_out(q, prefix + (name,))
    return found


# argv of each command with an output, its input written as {IN}; commands with no input file map to None
OUT_OVER_INPUT = {
    ("compile",): ["compile", "{IN}", "-o", "{IN}"],
    ("convert",): ["convert", "{IN}", "-o", "{IN}"],
    ("demo",): None,
    ("energy",): ["energy", "{IN}", "-o", "{IN}"],
    ("eval",): ["eval", "{IN}", "-o", "{IN}"],
    ("export",): ["export", "{IN}", "-o", "{IN}"],
    ("inherit-tsm",): ["inherit-tsm", "{IN}", "-o", "{IN}"],
    ("lava", "export"): ["lava", "export", "{IN}", "-o", "{IN}"],
    ("sample",): ["sample", "{IN}", "-o", "{IN}"],
    ("train",): None,
}


def test_every_command_refuses_an_output_that_is_its_input(tmp_path, capsys):
    """One rule for all commands (sdmc.cli.main, from the parser's positional arguments): -o naming the input
    file is one line, before any work, and the file is untouched, whatever the input is.  A new command with
    -o fails here until it is listed above."""
    assert sorted(_commands_with_out()) == sorted(OUT_OVER_INPUT)
    src = tmp_path / "input.bin"
    src.write_bytes(b"not a model")
    for cmd, argv in OUT_OVER_INPUT.items():
        if argv is None:
            continue
        assert main([a.replace("{IN}", str(src)) for a in argv]) == 2, cmd
        _one_line_error(capsys, "is the input", str(src))
        assert src.read_bytes() == b"not a model"
