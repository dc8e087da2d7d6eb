"""Time per sample of a sequential conv-IF chain: Lava CPU simulation (fast and stock conv) vs the numpy
Loihi model, and check that all three give the same spikes.

    python benchmarks/lava_chain.py [--ch 8] [--size 16] [--layers 3] [--T 4] [--batch 4] [--stock]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def build_graph(ch: int, size: int, layers: int, T: int, seed: int = 0):
    from sdmc import ir

    rng = np.random.default_rng(seed)
    g = ir.Graph(T)
    g.add(ir.Input(name="x", shape=(2, size, size), kind="spike", timing="per-step"))
    src, c_in = "x", 2
    for i in range(layers):
        g.add_param(f"c{i}.w", rng.normal(0, 1.8 / np.sqrt(9 * c_in), (ch, c_in, 3, 3)))
        g.add_param(f"c{i}.b", rng.normal(0, 0.05, ch))
        g.add(ir.Conv2d(name=f"c{i}", inputs=(src,), weight=f"c{i}.w", bias=f"c{i}.b", padding=(1, 1)))
        g.add(ir.IF(name=f"n{i}", inputs=(f"c{i}",)))
        src, c_in = f"n{i}", ch
    g.add(ir.Output(name="out", inputs=(src,)))
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ch", type=int, default=8)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--stock", action="store_true", help="also time Lava's stock scipy convolution")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from sdmc.backends.lava import compat, netx_chain
    from sdmc.backends.lava import network as lnet
    from sdmc.sim import loihi as lm

    t0 = time.perf_counter()
    compat.import_lava()
    t_import = time.perf_counter() - t0
    from sdmc.backends.lava import run_netx_chain

    g = build_graph(args.ch, args.size, args.layers, args.T)
    rng = np.random.default_rng(1)
    x = (rng.random((args.T, args.batch, 2, args.size, args.size)) < 0.3).astype(np.int64)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chain.h5")
        q, rep = netx_chain.export_netx(g, path)
        fchain = netx_chain.extract_chain(g)
        netx_chain.evaluate(fchain, q, rep, x)
        print(rep.format())
        L = len(q.layers)
        t0 = time.perf_counter()
        res = lm.run_chain(q, x, num_steps=args.T + L, reset_interval=args.T + L)
        t_model = time.perf_counter() - t0
        model = lnet.aligned_spikes(res, args.T)
        rows = [("numpy Loihi model", t_model, None)]
        for fast in [True, False] if args.stock else [True]:
            t0 = time.perf_counter()
            lr = run_netx_chain.run_netx(path, x, read_v=False, fast_conv=fast)
            total = time.perf_counter() - t0
            same = all(np.array_equal(a, b) for a, b in zip(lr.spikes, model))
            rows.append((f"Lava ({'fast' if fast else 'stock'} conv)", total, (lr.times, same)))
            if fast is True and args.stock:
                import lava.proc.conv.utils as cu  # undo the patch for the stock run

                cu.conv = getattr(cu.conv, "__wrapped__", cu.conv)
    n_neurons = sum(int(np.prod(s)) for s in q.shapes()[1:])
    print(
        f"\nnet: {args.layers} x conv3x3-IF, {args.ch} ch, {args.size}x{args.size}, {n_neurons} neurons, "
        f"T={args.T}, batch={args.batch} ({args.batch * (args.T + L)} Lava steps); import lava {t_import:.1f} s"
    )
    for name, t, extra in rows:
        line = f"{name:<24} {t:8.2f} s total  {t / args.batch:8.3f} s/sample"
        if extra:
            times, same = extra
            line += (
                f"  (build {times['build']:.2f}, run {times['run']:.2f}, read {times['read']:.2f} s; "
                f"spikes == model: {same})"
            )
        print(line)


if __name__ == "__main__":
    main()
