"""Loihi fixed-point simulator, bit-exact to Lava's CPU simulation, of the networks in
:mod:`sdmc.backends.lava.network` (sequential chains and DAG nets).

It reproduces what ``lava.lib.dl.netx.hdf5.Network`` runs under ``Loihi2SimCfg(select_tag='fixed_pt')``:
``PyConvModelFixed`` / ``PyDenseModelBitAcc`` synapses feeding ``PyLifModelBitAcc`` (or the ``LIFReset``
variant) CUBA neurons.  All arithmetic is integer numpy; one unit = one weight LSB times one unary spike.

Neuron step (``du``, ``dv`` 12-bit decays; ``<< 6`` aligns inputs, bias and threshold with the 24-bit state)::

    u = sgn(u*(4096 - du - 1)) * (|u*(4096 - du - 1)| >> 12) + (a_in << 6)    # wraps once past +-2^23
    v = sgn(v*(4096 - dv))     * (|v*(4096 - dv)|     >> 12) + u + (int16(bias_mant) << bias_exp)
    v = clip(v, -(2^23 - 1), 2^23 - 1);   s = v > (vth << 6);   v[s] = 0

IF (spikingjelly ``IFNode``) is ``du = 4095, dv = 0`` (netx ``iDecay = 4096, vDecay = 0``); its ``v >= theta``
is ``vth = theta - 1`` because every state is a multiple of 64.

Chain timing (:func:`run_chain`, Lava steps ``t = 1..N``): the input source sends ``x[t-1]`` at step ``t``;
every synapse sends at step ``t`` what it received at ``t-1`` (one step of delay per layer), so layer ``n``
(1-based) responds to input sample ``k`` at step ``k + 1 + n``.  With ``reset_interval = R`` layer ``n`` zeroes
``u, v`` before integrating at every step with ``t % R == (reset_offset + n) % R`` (netx's per-layer offsets).
Net timing (:func:`run_net`): the rules in :mod:`sdmc.backends.lava.network`.
"""

from __future__ import annotations

import numpy as np

from sdmc.backends.lava.network import (
    ACT_SHIFT,
    DECAY_SHIFT,
    DECAY_UNITY,
    MAX_STATE,
    STATE_BITS,
    VTH_SHIFT,
    Cuba,
    LoihiChain,
    LoihiLayer,
    LoihiNet,
    Projection,
    check_chain,
    check_net,
    check_net_inputs,
    net_bias,
)
from sdmc.errors import SdmcError


# ------------------------------------------------------------------------------ pure integer kernels
def _decay(x: np.ndarray, d: int) -> np.ndarray:
    """``sgn(x*(4096-d)) * (|x*(4096-d)| >> 12)`` in int64, truncating toward zero as Lava does."""
    p = x.astype(np.int64) * (DECAY_UNITY - d)
    return (np.sign(p) * (np.abs(p) >> DECAY_SHIFT)).astype(np.int64)


def cuba_step(
    u: np.ndarray, v: np.ndarray, a_in: np.ndarray, bias_mant: np.ndarray | int, p: Cuba
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ``PyLifModelBitAcc`` step; returns new ``(u, v, spikes)`` (int64, int64, bool).  Pure."""
    cur = _decay(u, p.du + 1).astype(np.int32).astype(np.int64) + (np.asarray(a_in, np.int64) << ACT_SHIFT)
    wrapped = np.where(cur > MAX_STATE, cur - 2 * MAX_STATE, cur)
    u_new = np.where(wrapped <= -MAX_STATE, cur + 2 * MAX_STATE, wrapped)
    bias = np.asarray(bias_mant).astype(np.int16).astype(np.int64)  # Lava stores bias_mant as int16
    bias = bias << p.bias_exp if p.bias_exp >= 0 else bias >> -p.bias_exp
    v_new = _decay(v, p.dv).astype(np.int32).astype(np.int64) + u_new + bias
    # Lava clips v to +-(2^23 - 1); the upper limit is above every threshold (MAX_VTH << 6), so a v it clips fires
    v_new = np.maximum(v_new, -MAX_STATE + 1)
    v_new = np.minimum(v_new, MAX_STATE - 1)
    s = v_new > (np.int64(p.vth) << VTH_SHIFT)
    v_new = np.where(s, 0, v_new)
    return u_new, v_new, s


def signed_clamp(x: np.ndarray, bits: int = STATE_BITS) -> np.ndarray:
    """Lava's conv output 'clamp': wrap into the signed ``bits`` range."""
    base = 1 << bits
    return (x + base // 2) % base - base // 2


def conv2d_f64(
    x: np.ndarray, w: np.ndarray, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups: int = 1
) -> np.ndarray:
    """Float64 cross-correlation ``[B, C, H, W] * [O, C/groups, kh, kw] -> [B, O, H', W']`` (BLAS tensordot)."""
    B, C, H, W = x.shape
    w = np.asarray(w, np.float64)
    O, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), G = stride, padding, dilation, groups
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]
    Ho, Wo = win.shape[2:4]
    win = win.reshape(B, G, Cg, Ho, Wo, kh, kw)
    wg = w.reshape(G, O // G, Cg, kh, kw)
    y = np.stack([np.tensordot(win[:, g], wg[g], axes=([1, 4, 5], [1, 2, 3])) for g in range(G)], axis=1)
    return y.transpose(0, 1, 4, 2, 3).reshape(B, O, Ho, Wo)  # [B, G, Ho, Wo, O/G] -> NCHW


def conv_synapse(s: np.ndarray, layer: LoihiLayer) -> np.ndarray:
    """``PyConvModelFixed``: integer conv of ``s`` ``[B, C, H, W]`` (torch cross-correlation), 24-bit wrap.

    Computed in float64, which is exact here: every partial sum is an integer far below 2^53.
    """
    y = conv2d_f64(s, layer.weight, layer.stride, layer.padding, layer.dilation, layer.groups)
    return signed_clamp(np.rint(y).astype(np.int64))


def dense_synapse(s: np.ndarray, layer: LoihiLayer) -> np.ndarray:
    """``PyDenseModelBitAcc`` as netx configures it: exact ``W @ s`` for 8-bit signed mantissas."""
    y = s.reshape(s.shape[0], -1).astype(np.float64) @ np.asarray(layer.weight, np.float64).T  # exact (< 2^53)
    return np.rint(y).astype(np.int64)


def run_chain(
    chain: LoihiChain,
    x: np.ndarray,
    *,
    num_steps: int | None = None,
    reset_interval: int | None = None,
    reset_offset: int = 1,
) -> dict[str, list[np.ndarray]]:
    """Simulate ``chain`` on inputs ``x`` ``[N, B, *input_shape]`` over Lava steps ``1..num_steps``.

    ``x[k]`` is sent at step ``k + 1``; steps past ``N`` send zeros (default ``num_steps = N + L``).
    Returns ``{'spikes': [s_1..s_L], 'v': [...], 'u': [...]}``, each ``[num_steps, B, *shape]`` indexed
    by ``step - 1``; ``v`` is read after the reset, as Lava probes it.
    """
    check_chain(chain)
    x = np.asarray(x)
    if x.ndim != 2 + len(chain.input_shape) or tuple(x.shape[2:]) != tuple(chain.input_shape):
        raise SdmcError(
            f"run_chain: input must be [N, B, {', '.join(map(str, chain.input_shape))}], got {list(x.shape)}"
        )
    L, N, B = len(chain.layers), x.shape[0], x.shape[1]
    steps = N + L if num_steps is None else int(num_steps)
    shapes = chain.shapes()
    xin = (x != 0).astype(np.int64) if chain.input_bits == 0 else x.astype(np.int64)  # 0: spikes; else graded
    buf = [np.zeros((B,) + shapes[i + 1], np.int64) for i in range(L)]
    u = [np.zeros_like(b) for b in buf]
    v = [np.zeros_like(b) for b in buf]
    bias = []
    for i, layer in enumerate(chain.layers):
        if layer.bias is None:
            bias.append(np.int64(0))
        else:
            b = np.asarray(layer.bias, np.int64)
            bias.append(b.reshape((-1,) + (1,) * (len(shapes[i + 1]) - 1)) if b.ndim == 1 else b)
    out = {
        k: [np.zeros((steps, B) + shapes[i + 1], np.int64 if k != "spikes" else bool) for i in range(L)]
        for k in ("spikes", "v", "u")
    }
    for t in range(1, steps + 1):
        s_prev = xin[t - 1] if t - 1 < N else np.zeros_like(xin[0])
        for i, layer in enumerate(chain.layers):
            a_in = buf[i]
            syn = conv_synapse if layer.kind == "conv" else dense_synapse
            buf[i] = syn(s_prev, layer).reshape((B,) + shapes[i + 1])
            if reset_interval is not None and t % reset_interval == (reset_offset + 1 + i) % reset_interval:
                u[i][...] = 0
                v[i][...] = 0
            u[i], v[i], s = cuba_step(u[i], v[i], a_in, bias[i], layer.neuron)
            out["spikes"][i][t - 1], out["v"][i][t - 1], out["u"][i][t - 1] = s, v[i], u[i]
            s_prev = s.astype(np.int64)
    return out


# ------------------------------------------------------------------------------ LoihiNet
def _upsample(s: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour ``x k`` on the last two axes."""
    return s if k == 1 else s.repeat(k, axis=-2).repeat(k, axis=-1)


_CONV_CHUNK = 1 << 24  # float64 elements of one im2col window block (128 MB)  # pragma: no mutate (memory only)


def projection_current(proj: Projection, s: np.ndarray, dst_shape: tuple[int, ...]) -> np.ndarray:
    """Integer synaptic output of ``proj`` for source outputs ``s`` ``[M, *src_shape]`` -> ``[M, *dst_shape]``.

    conv: ``conv(upsample(s))`` in float64 (exact: integer partial sums far below 2^53), wrapped to 24 bit
    like Lava's ``Conv`` when ``upsample == 1`` (the upsampling path is a ``Sparse`` synapse, which does not
    wrap; the two differ only for ``|a_in| >= 2^23``, far past the 2^17 at which ``u`` wraps anyway);
    dense: ``s_flat @ W.T``; identity: ``s``.  Rows of ``s`` that are all zero are skipped.
    """
    M = s.shape[0]
    out = np.zeros((M,) + tuple(dst_shape), np.int64)
    nz = np.flatnonzero(s.reshape(M, -1).any(axis=1)) if M else np.zeros(0, int)
    if nz.size == 0:
        return out
    x = s[nz]
    if proj.kind == "identity":
        out[nz] = x
    elif proj.kind == "dense":
        y = x.reshape(len(nz), -1).astype(np.float64) @ np.asarray(proj.weight, np.float64).T
        out[nz] = np.rint(y).astype(np.int64).reshape((len(nz),) + tuple(dst_shape))
    else:
        C, H, W = x.shape[1:]
        kh, kw = proj.weight.shape[2:]
        # rows per block: any block size gives the same result (memory only)
        per_row = C * kh * kw * int(np.prod(dst_shape[1:]))  # pragma: no mutate
        step = max(1, _CONV_CHUNK // max(per_row, 1))  # pragma: no mutate
        bound = int(np.abs(x).max()) * int(
            np.abs(proj.weight.astype(np.int64)).reshape(len(proj.weight), -1).sum(axis=1).max()
        )
        for i in range(0, len(nz), step):
            xi = _upsample(x[i : i + step], proj.upsample)
            y = exact_conv(xi, proj.weight, proj.stride, proj.padding, proj.dilation, proj.groups, bound)
            out[nz[i : i + step]] = signed_clamp(y) if proj.upsample == 1 else y
    return out


def exact_conv(x: np.ndarray, w: np.ndarray, stride, padding, dilation, groups: int, bound: int) -> np.ndarray:
    """Integer cross-correlation ``[B, C, H, W] * [O, C/g, kh, kw]`` -> int64.  ``bound`` >= every
    ``sum |w| |x|`` of one output: below 2^24 every partial sum is an integer float32 holds exactly, in any
    summation order, so torch's float32 conv (direct algorithm, ~2.5x faster than float64 BLAS here) is
    exact; otherwise :func:`conv2d_f64`."""
    if bound < (1 << 24):
        import torch

        with torch.no_grad():
            y = torch.nn.functional.conv2d(
                torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                torch.from_numpy(np.ascontiguousarray(w, np.float32)),
                None,
                tuple(stride),
                tuple(padding),
                tuple(dilation),
                int(groups),
            )
        return y.numpy().astype(np.int64)
    return np.rint(conv2d_f64(x, w, stride, padding, dilation, groups)).astype(np.int64)


def run_net(
    net: LoihiNet,
    inputs: dict[str, np.ndarray],
    *,
    num_steps: int | None = None,
    host_bias: dict[str, np.ndarray] | None = None,
    record_v: bool = True,
) -> dict[str, dict]:
    """Simulate ``net`` bit-exactly over Lava steps ``1..num_steps`` (default ``N + max_depth``).

    ``inputs[source]`` ``[N, B, *shape]``: sample step ``k`` is sent at Lava step ``k + 1`` (zeros after
    ``N``); unary sources binarise (non-zero = spike), graded ones send the integers.  Population ``P``
    receives at step ``t`` the sum over its projections of ``syn(out_src[t - 1 - delay])``
    (:func:`projection_current`), is reset (``u = v = 0``) before integrating at step ``depth + 1`` and then
    runs :func:`cuba_step` with ``bias_mant = bias + host_bias[P][b]`` (stored as int16, as Lava does).

    Being feed-forward, the net is evaluated population by population with every step and sample in one
    batched synapse call, then the neuron recurrence over steps.  Returns ``{'spikes': {pop: bool
    [steps, B, *shape]}, 'v': {pop: int64 ...} (after the spike reset, as Lava probes it; empty unless
    record_v), 'max_current': {pop: max |a_in| from the reset on}}``; the arrays are indexed by ``step - 1``.
    Bit-exact to Lava while ``|a_in| < 2^25``; ``u`` wraps (as on Loihi) once ``|a_in| > 2^17``
    (:data:`MAX_CURRENT`), which ``max_current`` exposes.
    """
    check_net(net)
    N, B, vals = check_net_inputs(net, inputs, "run_net")
    steps = N + net.max_depth if num_steps is None else int(num_steps)
    if steps < 1:
        raise SdmcError(f"run_net: num_steps must be >= 1, got {num_steps}")
    bias = net_bias(net, host_bias, B)
    hist: dict[str, np.ndarray] = {}
    for s in net.sources:
        h = np.zeros((steps, B) + tuple(s.shape), vals[s.name].dtype)
        h[: min(N, steps)] = vals[s.name][:steps]
        hist[s.name] = h
    res = {"spikes": {}, "v": {}, "max_current": {}}
    for pop in net.populations:
        shape = tuple(pop.shape)
        a_in = np.zeros((steps, B) + shape, np.int64)
        for proj in net.incoming(pop.name):
            lag = 1 + proj.delay
            if steps <= lag:
                continue
            s = hist[proj.src][: steps - lag]
            cur = projection_current(proj, s.reshape((-1,) + s.shape[2:]), shape)
            a_in[lag:] += cur.reshape((steps - lag, B) + shape)
        spikes = np.zeros((steps, B) + shape, bool)
        volts = np.zeros((steps, B) + shape, np.int64) if record_v else None
        u = np.zeros((B,) + shape, np.int64)
        v = np.zeros_like(u)
        # with zero bias, u = v = 0 and no spikes until the first non-zero input (or the reset): skip those steps
        first = 1
        if not bias[pop.name].any():
            active = np.flatnonzero(a_in.reshape(steps, -1).any(axis=1))
            first = min(pop.depth + 1, int(active[0]) + 1 if active.size else steps + 1)
        for t in range(first, steps + 1):
            if t == pop.depth + 1:
                u[...] = 0
                v[...] = 0
            u, v, spikes[t - 1] = cuba_step(u, v, a_in[t - 1], bias[pop.name], pop.neuron)
            if record_v:
                volts[t - 1] = v
        hist[pop.name] = spikes
        res["spikes"][pop.name] = spikes
        if record_v:
            res["v"][pop.name] = volts
        live = a_in[pop.depth :]  # from the reset on: earlier input is discarded
        res["max_current"][pop.name] = int(np.abs(live).max()) if live.size else 0
    return res
