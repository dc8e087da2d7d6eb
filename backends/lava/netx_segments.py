"""Netx segments: how a :class:`~.network.LoihiNet` splits into sequential netx chains, one HDF5 file each.

Every population's *main* incoming projection (:func:`main_projections`) becomes its layer's synapse in a netx
file; :func:`segments` links populations whose main projection continues another's chain (undelayed conv /
dense from a population) into maximal chains, every population in exactly one; :func:`segment_chain` is the
:class:`~.network.LoihiChain` of one segment (an identity host current, or no main projection at all, as a
unit-weight synapse).  The other projections are the wiring the export manifest records (:mod:`.manifest`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .network import STATE_BITS, LoihiChain, LoihiLayer, LoihiNet, Population, Projection, Source


def main_projections(net: LoihiNet) -> dict[str, Projection | None]:
    """Per population the incoming projection its netx segment layer holds (its "main" one).

    Preferred, in this order: a conv / dense without upsample from a population on the longest path
    (``delay == 0``), then any conv / dense without upsample (from a source or delayed), then an identity
    host current (exact in netx as a depthwise 1x1 conv of unit weights on graded input).  netx has no
    upsample, so an upsampled projection is never a main one; a population fed only by upsampled
    projections gets ``None`` (its segment layer reads the summed current through a unit conv)."""
    out: dict[str, Projection | None] = {}
    for p in net.populations:
        inc = net.incoming(p.name)
        syn = [pr for pr in inc if pr.kind in ("conv", "dense") and pr.upsample == 1]
        syn.sort(key=lambda pr: (pr.delay != 0, isinstance(net.node(pr.src), Source)))
        ident = [pr for pr in inc if pr.kind == "identity"]
        out[p.name] = syn[0] if syn else (ident[0] if ident else None)
    return out


def _continues(net: LoihiNet, pr: Projection | None) -> bool:
    """A main projection that continues its source population's chain inside one netx file."""
    return (
        pr is not None and pr.kind in ("conv", "dense") and pr.delay == 0 and isinstance(net.node(pr.src), Population)
    )


def segments(net: LoihiNet) -> list[list[str]]:
    """Partition of the populations into maximal netx chains along main projections
    (:func:`main_projections`): every population lies in exactly one segment.  Where several populations
    continue one population's chain, the one with the longest chain below it does (the rest start their
    own segments, whose input layer is that population's spikes)."""
    mains = main_projections(net)
    kids: dict[str, list[str]] = {}
    for p in net.populations:
        if _continues(net, mains[p.name]):
            kids.setdefault(mains[p.name].src, []).append(p.name)
    length: dict[str, int] = {}
    nxt: dict[str, str] = {}
    for p in reversed(net.populations):  # topological order reversed: children first
        best = max(kids.get(p.name, []), key=lambda c: length[c], default=None)
        length[p.name] = 1 + (length[best] if best is not None else 0)
        if best is not None:
            nxt[p.name] = best
    inner = set(nxt.values())
    out = []
    for p in net.populations:
        if p.name in inner:
            continue
        chain = [p.name]
        while chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        out.append(chain)
    return out


def netx_bias(p: Population) -> np.ndarray | None:
    """The bias a netx layer can hold (per channel); a full-shape bias stays in projections.h5."""
    return p.bias if p.bias is not None and np.ndim(p.bias) == 1 else None


def _unit_layer(p: Population) -> tuple[str, np.ndarray, int]:
    """``(kind, weight, groups)`` of the one-to-one unit-weight synapse that stands for an identity projection."""
    if len(p.shape) == 3:
        return "conv", np.ones((p.shape[0], 1, 1, 1), np.int8), int(p.shape[0])
    return "dense", np.eye(p.shape[0], dtype=np.int8), 1


def segment_chain(
    net: LoihiNet, chain: list[str], mains: Mapping[str, Projection | None]
) -> tuple[LoihiChain, list[int], dict]:
    """The LoihiChain of a segment, per population its layer index in the netx file, and the segment's
    input description (``input``: the main source, or None for a summed current; ``input_kind``)."""
    head = net.node(chain[0])
    first = mains[chain[0]]
    if first is None or first.kind == "identity":
        shape = tuple(head.shape)
        bits = net.node(first.src).bits if first is not None else STATE_BITS
        info = {"input": None if first is None else first.src, "input_kind": "current" if first is None else "graded"}
    else:
        src = net.node(first.src)
        shape, bits = tuple(src.shape), (src.bits if isinstance(src, Source) else 0)
        info = {"input": first.src, "input_kind": "graded" if bits else "spikes"}
    in_shape = shape
    layers, idx, k = [], [], 1
    for name in chain:
        pr, p = mains[name], net.node(name)
        if pr is None or pr.kind == "identity":
            kind, w, groups = _unit_layer(p)
            kw = dict(groups=groups)
        else:
            kind, w = pr.kind, pr.weight
            kw = dict(stride=pr.stride, padding=pr.padding, dilation=pr.dilation, groups=pr.groups)
        if kind == "dense" and len(shape) > 1:
            k += 1  # write_netx puts a flatten layer first
        idx.append(k)
        k += 1
        layers.append(LoihiLayer(kind=kind, weight=w, neuron=p.neuron, bias=netx_bias(p), name=name, **kw))
        shape = tuple(p.shape)
    info["input_shape"] = list(in_shape)
    info["input_delay"] = 0 if first is None else int(first.delay)  # steps the input waits (delay alignment)
    return LoihiChain(in_shape, tuple(layers), input_bits=bits), idx, info
