"""Time the bit-exact LoihiNet model (sdmc.sim.loihi.run_net) on a CIFAR-size UNet-shaped net.

    .venv/bin/python benchmarks/bench_loihi_net.py                  # ch 128, ch_mult 1,2,2,2, 2 blocks, T = 4, 8
    .venv/bin/python benchmarks/bench_loihi_net.py --ch 64 --T 4 --baseline
    .venv/bin/python benchmarks/bench_loihi_net.py --ch 8 --ch-mult 1,2 --blocks 1 --size 16 --T 4 --B 2 --lava

The net has the SDDPM UNet's spiking core shape (32x32 graded image -> head conv; per level ResBlocks of two
3x3 convs plus a 1x1 shortcut delayed to align; stride-2 downsampling; decoder blocks on split-weight concats
of the skip and the current stream with delay lines; x2 upsample + conv) with random int8 weights and
thresholds set for moderate firing.  ``--baseline`` also times the step-major evaluation (one synapse call per
projection per Lava step, as a per-step simulator would do it) and prints the ratio; both give identical spikes.
``--lava`` runs the same net in Lava's fixed-point simulation and checks every population's spikes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sdmc.backends.lava import network as lnet
from sdmc.sim import loihi as lm


def unet_net(ch: int = 128, ch_mult=(1, 2, 2, 2), blocks: int = 2, size: int = 32, seed: int = 0) -> lnet.LoihiNet:
    rng = np.random.default_rng(seed)
    pops, projs = [], []
    info = {"x": ((3, size, size), 0)}

    def pop(name, shape, inputs):
        """``inputs``: [(src, kind-kwargs)]; depth = max(src depth) + 1, delays fill the rest."""
        depth = max(info[s][1] for s, _ in inputs) + 1
        fan = 0
        for s, kw in inputs:
            w = kw.pop("w")
            fan += int(np.prod(w.shape[1:]))
            projs.append(lnet.Projection(s, name, "conv", w, delay=depth - info[s][1] - 1, name=f"{s}->{name}", **kw))
        vth = int(max(1, 0.6 * np.sqrt(fan * 0.2) * 4.9))  # ~ 0.6 std of the input current at rate 0.2
        pops.append(lnet.Population(name, shape, lnet.Cuba(vth=vth), depth=depth))
        info[name] = (shape, depth)
        return name

    def conv(cin, cout, k=3, **kw):
        return dict(w=rng.integers(-8, 9, (cout, cin, k, k)).astype(np.int8), padding=(k // 2, k // 2), **kw)

    h = pop("head", (ch, size, size), [("x", conv(3, ch))])
    skips, c, s = [(h, ch)], ch, size
    for i, m in enumerate(ch_mult):
        for j in range(blocks):
            a = pop(f"d{i}.{j}.a", (ch * m, s, s), [(h, conv(c, ch * m))])
            h = pop(f"d{i}.{j}.b", (ch * m, s, s), [(a, conv(ch * m, ch * m)), (h, conv(c, ch * m, k=1))])
            c = ch * m
            skips.append((h, c))
        if i < len(ch_mult) - 1:
            s //= 2
            h = pop(f"down{i}", (c, s, s), [(h, conv(c, c, stride=(2, 2)))])
            skips.append((h, c))
    for i, m in reversed(list(enumerate(ch_mult))):
        for j in range(blocks + 1):
            sk, cs = skips.pop()
            a = pop(f"u{i}.{j}.a", (ch * m, s, s), [(h, conv(c, ch * m)), (sk, conv(cs, ch * m))])
            h = pop(
                f"u{i}.{j}.b",
                (ch * m, s, s),
                [(a, conv(ch * m, ch * m)), (h, conv(c, ch * m, k=1)), (sk, conv(cs, ch * m, k=1))],
            )
            c = ch * m
        if i:
            s *= 2
            h = pop(f"up{i}", (c, s, s), [(h, conv(c, c, upsample=2))])
    return lnet.check_net(lnet.LoihiNet((lnet.Source("x", (3, size, size), bits=8),), tuple(pops), tuple(projs), (h,)))


def step_major(net: lnet.LoihiNet, inputs: dict, steps: int) -> dict:
    """Baseline: every step, every population, one synapse call per projection on that step's spikes."""
    B = next(iter(inputs.values())).shape[1]
    hist = {s.name: [np.zeros((B,) + s.shape, np.int64)] for s in net.sources}  # hist[n][t] = output at step t
    for s in net.sources:
        x = inputs[s.name]
        hist[s.name] += [x[t] if t < len(x) else np.zeros_like(x[0]) for t in range(steps)]
    bias = lnet.net_bias(net, None, B)
    state = {p.name: [np.zeros((B,) + p.shape, np.int64)] * 2 for p in net.populations}
    for p in net.populations:
        hist[p.name] = [np.zeros((B,) + p.shape, bool)]
    for t in range(1, steps + 1):
        for p in net.populations:
            a = np.zeros((B,) + p.shape, np.int64)
            for pr in net.incoming(p.name):
                k = t - 1 - pr.delay
                if k >= 1:
                    a += lm.projection_current(pr, hist[pr.src][k], p.shape)
            u, v = state[p.name] if t != p.depth + 1 else [np.zeros_like(a)] * 2
            u, v, s = lm.cuba_step(u, v, a, bias[p.name], p.neuron)
            state[p.name] = [u, v]
            hist[p.name].append(s)
    return {p.name: np.stack(hist[p.name][1:]) for p in net.populations}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ch", type=int, default=128)
    ap.add_argument("--ch-mult", default="1,2,2,2")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--T", default="4,8")
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--lava", action="store_true", help="also run the net in Lava (run_lava_net) and compare")
    ap.add_argument("--upsample", default="subpixel", choices=("sparse", "subpixel"), help="Lava upsample synapses")
    a = ap.parse_args()
    net = unet_net(a.ch, tuple(int(c) for c in a.ch_mult.split(",")), a.blocks, a.size)
    n_neurons = sum(int(np.prod(p.shape)) for p in net.populations)
    print(
        f"net: {len(net.populations)} populations, {len(net.projections)} projections, {n_neurons} neurons, "
        f"max depth {net.max_depth}"
    )
    rng = np.random.default_rng(1)
    for T in (int(t) for t in a.T.split(",")):
        x = {"x": rng.integers(0, 256, (T, a.B, 3, a.size, a.size))}
        t0 = time.perf_counter()
        r = lm.run_net(net, x, record_v=False)
        dt = time.perf_counter() - t0
        al = lnet.aligned_net_spikes(r, net, T)
        rate = np.mean([s.mean() for s in al.values()])
        line = (
            f"T={T} B={a.B}: run_net {dt:.1f} s ({dt / a.B:.1f} s per sample, {T + net.max_depth} Lava steps), "
            f"mean firing rate {rate:.3f}"
        )
        if a.baseline:
            t0 = time.perf_counter()
            ref = step_major(net, x, T + net.max_depth)
            db = time.perf_counter() - t0
            assert all(np.array_equal(ref[p], r["spikes"][p]) for p in ref)
            line += f"; step-major baseline {db:.1f} s -> {db / dt:.2f}x"
        print(line, flush=True)
        if a.lava:
            from sdmc.backends.lava.lava_processes import run_lava_net

            t0 = time.perf_counter()
            res = run_lava_net(net, x, probe=tuple(p.name for p in net.populations), upsample=a.upsample)
            dl = time.perf_counter() - t0
            same = all(np.array_equal(res.spikes[p], al[p]) for p in al)
            tm = ", ".join(f"{k} {v:.1f} s" for k, v in res.times.items())
            print(
                f"  Lava: {dl:.1f} s for {a.B} sample(s), {res.n_processes} processes ({tm}); "
                f"spikes of all {len(al)} populations identical to run_net: {same}",
                flush=True,
            )


if __name__ == "__main__":
    main()
