"""``sdmc inherit-tsm``: SDDPM -> SDM, copy the conv weights into TSM convs (every p = 1)."""

from __future__ import annotations

import argparse

from .base import Command, add_out, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="SDDPM checkpoint")
    add_out(p, "output native model (.safetensors)", required=True, directory=False)
    p.add_argument(
        "--snn-steps", type=positive_int, default=None, help="SNN steps T of the SDDPM model if not recorded"
    )


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import inherit_tsm_file

    cfg = inherit_tsm_file(args.file, args.out, snn_steps=args.snn_steps)
    print(
        f"wrote {args.out}: SDM TSM UNet, T={cfg.model.snn_steps}, ch={cfg.model.ch}, "
        f"ch_mult={list(cfg.model.ch_mult)} (every p initialised to 1)"
    )
    return 0


INHERIT_TSM = Command("inherit-tsm", "SDDPM -> SDM: copy conv weights into TSM convs (p = 1)", add_arguments, run)
