"""``sdmc lava ACTION``: install Lava, export a sequential spiking chain to netx, run it, and the Loihi 2
resource report of a model's spiking core."""

from __future__ import annotations

import argparse

from .base import Command, add_json, add_out, add_seed, count, positive, positive_int, probability
from .loihi import add_model_file, load_graph


def add_arguments(p: argparse.ArgumentParser) -> None:
    lsub = p.add_subparsers(dest="lava_command", metavar="ACTION", required=True)
    q = lsub.add_parser("install", help="pip-install lava-nc 0.10.0 / lava-dl 0.6.0 without their pinned deps")
    q.add_argument("--check", action="store_true", help="only verify that Lava imports")
    q.set_defaults(lava_run=run_install)

    q = lsub.add_parser("export", help="quantise a chain graph (.sdmc) for Loihi and write one netx HDF5 file")
    q.add_argument("graph", help=".sdmc zip or graph directory (e.g. from 'sdmc compile')")
    add_out(q, "netx HDF5 file to write", required=True, directory=False)
    q.add_argument("--pow2", action="store_true", help="power-of-two weight scales (dyadic weights stay exact)")
    q.add_argument(
        "--on-overflow",
        choices=["error", "rescale"],
        default="error",
        help="when a layer's worst per-step current overflows 24-bit state: fail (default) or rescale",
    )
    q.add_argument(
        "--tsm",
        choices=["reject", "mean"],
        default="reject",
        help="SDM per-step (TSM) conv scales: reject (default) or approximate by the mean",
    )
    q.add_argument(
        "--input-scale", type=positive, default=None, help="graded input: x_int = round(scale * x) (default 127)"
    )
    q.add_argument(
        "--check-samples",
        type=count,
        default=4,
        help="random inputs on which to report spike mismatch vs float (0: skip)",
    )
    add_seed(q, help="seed of the check inputs (default 0)")
    q.set_defaults(lava_run=run_export)

    q = lsub.add_parser(
        "resources",
        help="Loihi 2 resource report of a model's spiking core (neurons, synapses, fan-in/out, cores, chips)",
    )
    add_model_file(q)
    add_json(q)
    q.add_argument("--top", type=count, default=8, help="populations listed (largest first)")
    q.set_defaults(lava_run=run_resources)

    q = lsub.add_parser(
        "run", help="run a netx file in Lava's CPU simulation on random inputs; compare with the numpy Loihi model"
    )
    q.add_argument("file", help="netx HDF5 file written by 'sdmc lava export'")
    q.add_argument("--samples", type=positive_int, default=2, help="random input samples (default 2)")
    q.add_argument(
        "--steps", type=positive_int, default=None, help="time steps T per sample (default: recorded T, else 4)"
    )
    q.add_argument(
        "--density", type=probability, default=0.3, help="spike probability of random spike inputs (default 0.3)"
    )
    add_seed(q)
    q.add_argument("--stock-conv", action="store_true", help="use Lava's own (slow) scipy convolution")
    q.set_defaults(lava_run=run_run)


def run(args: argparse.Namespace) -> int:
    return args.lava_run(args)


def run_install(args: argparse.Namespace) -> int:
    from ..backends.lava import install

    return install.main(["--check"] if args.check else [])


def run_resources(args: argparse.Namespace) -> int:
    import json

    from ..backends import lava

    graph = load_graph(args)
    # the counts depend on shapes only: compile leniently (mean TSM, rescaled overflow) so any model reports
    net, plan, _ = lava.compile_net(graph, tsm="mean", on_overflow="rescale")
    res = lava.resources(net, plan.graph)
    print(json.dumps(res, indent=1) if args.json else lava.format_resources(res, top=args.top))
    return 0


def run_export(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import ir
    from ..backends.lava import netx_chain

    graph = ir.load(args.graph)
    chain, report = netx_chain.export_netx(
        graph, args.out, pow2=args.pow2, on_overflow=args.on_overflow, input_scale=args.input_scale, tsm=args.tsm
    )
    if args.check_samples > 0:
        rng = np.random.default_rng(args.seed)
        fchain = netx_chain.extract_chain(graph, tsm=args.tsm)
        shape = (graph.T, args.check_samples) + tuple(chain.input_shape)
        x = rng.uniform(-1, 1, shape) if fchain.graded_input else (rng.random(shape) < 0.3).astype(float)
        netx_chain.evaluate(fchain, chain, report, x)
    print(report.format())
    print(
        f"wrote {args.out}: {len(chain.layers)} layers, input {list(chain.input_shape)} "
        f"({'graded, 16-bit messages' if chain.input_bits else 'spikes'}), T={graph.T}"
    )
    return 0


def run_run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..backends.lava import netx_chain, run_netx_chain
    from ..backends.lava.network import aligned_spikes
    from ..sim.loihi import run_chain

    rng = np.random.default_rng(args.seed)
    chain = netx_chain.read_netx(args.file)
    T = args.steps if args.steps is not None else int(chain.meta.get("T", 4))
    shape = (T, args.samples) + tuple(chain.input_shape)
    x = rng.integers(-127, 128, shape) if chain.input_bits else (rng.random(shape) < args.density).astype(np.int64)
    res = run_netx_chain.run_netx(
        args.file, x, input_message_bits=chain.input_bits, read_v=False, fast_conv=not args.stock_conv
    )
    L = len(chain.layers)
    model = aligned_spikes(run_chain(chain, x, num_steps=T + L, reset_interval=T + L), T)
    same = all(np.array_equal(a, b) for a, b in zip(res.spikes, model))
    t = res.times
    print(
        f"Lava: {args.samples} sample(s) x {T + L} steps; build {t['build']:.2f} s, run {t['run']:.2f} s "
        f"({t['run'] / args.samples:.3f} s/sample), read {t['read']:.2f} s"
    )
    print(f"output firing rate {res.spikes[-1].mean():.4f}; spikes identical to the numpy Loihi model: {same}")
    return 0 if same else 1


LAVA = Command(
    "lava",
    "Lava-DL: install Lava, export a sequential spiking chain to netx, run it; resource report",
    add_arguments,
    run,
    description="Loihi backend for sequential conv/linear + IF chains (lava export / run), and the Loihi 2 "
    "resource report of any model's spiking core (lava resources); the whole UNet is 'sdmc export'.",
)
