"""The Loihi export directory: netx segment files, the wiring netx cannot express, the host part and a manifest.

:func:`export_dir` writes it, :func:`check_export` validates it, :func:`load_export` reads it back into the
:class:`~.network.LoihiNet` and :class:`~.host_plan.HostPlan` (reading every weight once, 8-bit weights kept as
int8).  Layout: see :func:`export_dir`; the split into netx chains: :mod:`.netx_segments`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ... import ir
from ...errors import SdmcError
from ...utils import atomic_dir
from .host_plan import HostCurrent, HostPlan, host_graph
from .network import Cuba, LoihiNet, Population, Projection, Source, check_chain, check_net
from .netx_chain import read_netx, write_netx
from .netx_segments import main_projections, netx_bias, segment_chain, segments
from .report import CompileReport

EXPORT_FORMAT = "sdmc-loihi-net"
EXPORT_VERSION = 2  # 2: every population in one netx segment, projection roles; 1 (no longer read): chains >= 2 only
MANIFEST = "manifest.json"
PROJ_FILE = "projections.h5"
GRAPH_FILE = "graph.sdmc"


def export_dir(
    net: LoihiNet,
    plan: HostPlan,
    report: CompileReport | None,
    path: str | os.PathLike,
    *,
    resources: dict | None = None,
    force: bool = False,
    protect: Sequence[str | os.PathLike] = (),
) -> Path:
    """Write the export directory atomically (:func:`sdmc.utils.atomic_dir`: only over an export sdmc wrote or
    an empty directory unless ``force``, never over one holding a path of ``protect``, the inputs):

    ``segment_NN.h5``: plain netx files (``input`` + ``conv`` / ``dense`` CUBA layers, what stock
    ``netx.hdf5.Network`` loads).  :func:`segments` puts every population in exactly one of them, each layer
    holding the population's main incoming projection (:func:`main_projections`; an identity host current
    as a unit-weight depthwise 1x1 conv on graded input); the segment's input layer has the main source's
    shape.  ``projections.h5``: the weights of every other projection (the wiring netx cannot express:
    extra synapses into one neuron, split concat, upsampled sources) and full-shape biases.
    ``manifest.json`` (format, :data:`EXPORT_VERSION`, T, sources, populations, projections with their
    ``role`` (``segment`` / ``wiring``), delay and weight reference, segments, outputs, host plan,
    quantisation report, notes).  ``graph.sdmc``: only the host part of the compiled graph
    (:func:`host_graph`: inputs, host-current terms and their ancestors, the tail with the output populations
    as spike inputs); the chip's weights are in the h5 files alone.  ``resources``: a :func:`resources`
    report, whose ``totals`` and ``limits`` the manifest records.
    """
    import h5py

    check_net(net)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SdmcError(f"export: {path} exists and is not a directory")
    with atomic_dir(path, force=force, protect=protect) as tmp:
        where: dict[tuple, dict] = {}  # ("population", name) / ("projection", index) -> {"file", "dataset"}
        pidx = {id(p): i for i, p in enumerate(net.projections)}  # names may repeat: one conv, two targets
        segs, role = [], {}  # role: projection index -> {"file", "layer"} of its segment layer
        mains = main_projections(net)
        for i, chain in enumerate(segments(net)):
            lc, idx, info = segment_chain(net, chain, mains)
            fname = f"segment_{i:02d}.h5"
            write_netx(lc, tmp / fname, meta={"T": net.meta.get("T"), "populations": chain})
            main_idx = []
            for name, k in zip(chain, idx):
                pr = mains[name]
                main_idx.append(None if pr is None else pidx[id(pr)])
                if pr is not None:
                    role[pidx[id(pr)]] = {"file": fname, "layer": k}
                    if pr.kind != "identity":
                        where[("projection", pidx[id(pr)])] = {"file": fname, "dataset": f"layer/{k}/weight"}
                if netx_bias(net.node(name)) is not None:
                    where[("population", name)] = {"file": fname, "dataset": f"layer/{k}/bias"}
            segs.append(
                {
                    "file": fname,
                    **info,
                    "populations": chain,
                    "layers": idx,
                    "main": main_idx,
                    "input_message_bits": lc.input_bits,
                }
            )
        with h5py.File(tmp / PROJ_FILE, "w") as f:
            for i, pr in enumerate(net.projections):
                if pr.weight is not None and ("projection", i) not in where:
                    ds = f"projection/{i}/weight"
                    f.create_dataset(ds, data=np.asarray(pr.weight).astype(np.int8))  # 8-bit (check_net)
                    where[("projection", i)] = {"file": PROJ_FILE, "dataset": ds}
            for i, p in enumerate(net.populations):
                if p.bias is not None and ("population", p.name) not in where:
                    ds = f"population/{i}/bias"
                    f.create_dataset(ds, data=np.asarray(p.bias).astype(np.int32))
                    where[("population", p.name)] = {"file": PROJ_FILE, "dataset": ds}
        ir.save(host_graph(plan.graph, plan.currents, plan.outputs), tmp / GRAPH_FILE)
        summary = None if resources is None else {k: resources[k] for k in ("totals", "limits")}
        manifest = _manifest(net, plan, report, where, segs, role, summary)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return path


def _notes(net: LoihiNet, report: CompileReport | None, segs: list[dict]) -> list[str]:
    multi = [p.name for p in net.populations if len(net.incoming(p.name)) > 1]
    wired = len(net.projections) - sum(1 for sg in segs for i in sg["main"] if i is not None)
    ups = [p.name for p in net.projections if p.upsample > 1]
    dl = [p for p in net.projections if p.delay > 0]
    notes = [
        f"{len(segs)} netx segment file(s) hold every population once, each layer with its main incoming "
        f"projection (segments[].main; identity host currents as unit-weight depthwise 1x1 convs on graded "
        f"input); the other {wired} projection(s) (projections[].role == 'wiring') are extra synapses into a "
        "layer's a_in, with their weights in projections.h5; a segment's input is its main source's output "
        "(input_kind 'current': the layer's a_in is only the wiring's summed current)",
        f"{len(multi)} population(s) sum several projections (residual adds, split concat, host currents): "
        "several synapses into one CUBA a_in; netx chains cannot express this",
        f"{len(ups)} projection(s) read a nearest-upsampled source (upsample + conv; netx has no unpool / "
        "convT: a Sparse synapse in Lava)",
        f"{len(dl)} projection(s) are delayed ({sum(p.delay for p in dl)} steps in all) so that every path "
        "into a population has the same length (dst.depth = src.depth + 1 + delay)",
        "sources are graded host currents (head conv, time embedding, large biases), sent per step through "
        "identity projections; the tail (BN, Swish, conv3d, membrane read-out) runs on the host from the "
        "output populations' spikes (graph.sdmc)",
    ]
    if report is not None and report.tsm_approx:
        notes.append(
            f"TSM: {len(report.tsm_approx)} per-step-scaled conv(s) approximated by their mean scale; a "
            "static synapse cannot apply p[t] (see quantisation.tsm_spread / tsm_error)"
        )
    return notes


def _manifest(net, plan, report, where, segs, role, resources_summary) -> dict:
    def neuron(c: Cuba) -> dict:
        return {"type": "CUBA", "vth": c.vth, "du": c.du, "dv": c.dv, "bias_exp": c.bias_exp}

    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "T": net.meta.get("T"),
        "sources": [{"name": s.name, "shape": list(s.shape), "bits": s.bits} for s in net.sources],
        "populations": [
            {
                "name": p.name,
                "shape": list(p.shape),
                "depth": p.depth,
                "neuron": neuron(p.neuron),
                "bias": where.get(("population", p.name)),
                "scale": net.meta.get("scales", {}).get(p.name),
                "theta": net.meta.get("thresholds", {}).get(p.name),
            }
            for p in net.populations
        ],
        "projections": [
            {
                "name": p.name,
                "src": p.src,
                "dst": p.dst,
                "kind": p.kind,
                "stride": list(p.stride),
                "padding": list(p.padding),
                "dilation": list(p.dilation),
                "groups": p.groups,
                "upsample": p.upsample,
                "delay": p.delay,
                "weight": where.get(("projection", i)),
                "role": "segment" if i in role else "wiring",
                "segment": role.get(i),
            }
            for i, p in enumerate(net.projections)
        ],
        "wiring": [i for i in range(len(net.projections)) if i not in role],
        "outputs": list(net.outputs),
        "segments": segs,
        "host": {
            "graph": GRAPH_FILE,
            "currents": [c.to_json() for c in plan.currents],
            "outputs": list(plan.outputs),
            "spike_inputs": list(plan.spike_inputs),
            "description": list(report.host) if report is not None else [],
        },
        "quantisation": report.to_json() if report is not None else None,
        "resources": resources_summary,
        "notes": _notes(net, report, segs),
        "meta": {k: v for k, v in net.meta.items() if k not in ("scales", "thresholds")},
    }


def check_export(path: str | os.PathLike) -> dict:
    """Read and validate an export directory; returns its manifest.  Checks the format and version (only
    :data:`EXPORT_VERSION` is read: a version-1 export predates per-population segments; export again),
    that every referenced file and dataset exists, that every population lies in exactly one segment and
    that each segment file is a netx chain (:func:`.netx_chain.read_netx`) whose input shape, layer shapes and
    neuron parameters match the manifest.  Problems raise one :class:`SdmcError` naming them."""
    return _read_checked(Path(path))[0]


def _read_checked(path: Path) -> tuple[dict, dict[tuple[str, str], np.ndarray]]:
    """:func:`check_export`'s manifest and the arrays the segment files hold, by ``(file, dataset)``, as stored
    (each segment file is read once, while checking it)."""
    import h5py

    mf = path / MANIFEST
    if not mf.is_file():
        raise SdmcError(f"{path}: no {MANIFEST}; not an sdmc Loihi export directory")
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise SdmcError(f"{mf}: unreadable manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != EXPORT_FORMAT:
        raise SdmcError(f"{mf}: format {m.get('format') if isinstance(m, dict) else None!r} is not {EXPORT_FORMAT!r}")
    if m.get("version") != EXPORT_VERSION:
        hint = "; it predates per-population netx segments: export the model again" if m.get("version") == 1 else ""
        raise SdmcError(
            f"{mf}: version {m.get('version')!r} is not supported (this sdmc reads version {EXPORT_VERSION}){hint}"
        )
    for key in ("sources", "populations", "projections", "outputs", "host", "segments"):
        if key not in m:
            raise SdmcError(f"{mf}: missing key {key!r}")
    refs = [(f"population {p['name']!r} bias", p["bias"]) for p in m["populations"] if p.get("bias")]
    refs += [(f"projection {p['name']!r} weight", p["weight"]) for p in m["projections"] if p["kind"] != "identity"]
    files: dict[str, set] = {}
    for what, ref in refs:
        if not ref or "file" not in ref or "dataset" not in ref:
            raise SdmcError(f"{mf}: {what} has no file / dataset reference")
        files.setdefault(ref["file"], set()).add((what, ref["dataset"]))
    for fname, items in files.items():
        fp = path / fname
        if not fp.is_file():
            raise SdmcError(f"{path}: missing file {fname!r} (holds {sorted(items)[0][0]})")
        with h5py.File(fp, "r") as f:
            for what, ds in items:
                if ds not in f:
                    raise SdmcError(f"{fp}: missing dataset {ds!r} ({what})")
    arrays = _check_segments(path, m)
    if not (path / m["host"]["graph"]).exists():
        raise SdmcError(f"{path}: missing host graph {m['host']['graph']!r}")
    return m, arrays


def _check_segments(path: Path, m: dict) -> dict[tuple[str, str], np.ndarray]:
    pops = {p["name"]: p for p in m["populations"]}
    shapes = {s["name"]: tuple(s["shape"]) for s in m["sources"]}
    shapes.update({k: tuple(p["shape"]) for k, p in pops.items()})
    seen: dict[str, str] = {}
    arrays: dict[tuple[str, str], np.ndarray] = {}
    for sg in m["segments"]:
        fname = sg.get("file")
        fp = path / str(fname)
        if not fp.is_file():
            raise SdmcError(f"{path}: missing segment file {fname!r}")
        names, main = list(sg.get("populations", ())), list(sg.get("main", ()))
        if not names or len(main) != len(names):
            raise SdmcError(
                f"{fp}: manifest segment lists {len(names)} population(s) and {len(main)} main projection(s)"
            )
        try:
            chain = read_netx(fp)
            check_chain(chain)
        except SdmcError as e:
            raise SdmcError(f"segment {fname!r}: {e}") from None
        for k, L in zip(chain.meta["netx_layers"], chain.layers):
            arrays[(fname, f"layer/{k}/weight")] = L.weight
            if L.bias is not None:
                arrays[(fname, f"layer/{k}/bias")] = L.bias
        if len(chain.layers) != len(names):
            raise SdmcError(
                f"{fp}: {len(chain.layers)} netx layer(s) for the {len(names)} population(s) the manifest lists"
            )
        head = sg.get("input")
        want_in = shapes.get(head) if sg.get("input_kind") != "current" else shapes.get(names[0])
        if want_in is None or tuple(chain.input_shape) != tuple(want_in):
            raise SdmcError(
                f"{fp}: input layer shape {list(chain.input_shape)} does not match its input "
                f"{head!r} ({None if want_in is None else list(want_in)})"
            )
        for name, got, L, i in zip(names, chain.shapes()[1:], chain.layers, main):
            if name not in pops:
                raise SdmcError(f"{fp}: segment names unknown population {name!r}")
            if name in seen:
                raise SdmcError(f"{path}: population {name!r} lies in two segments ({seen[name]!r}, {fname!r})")
            seen[name] = fname
            p = pops[name]
            n = p["neuron"]
            if tuple(got) != tuple(p["shape"]) or (L.neuron.vth, L.neuron.du, L.neuron.dv) != (
                n["vth"],
                n["du"],
                n["dv"],
            ):
                raise SdmcError(
                    f"{fp}: layer of population {name!r} (shape {list(got)}, vth {L.neuron.vth}, du "
                    f"{L.neuron.du}, dv {L.neuron.dv}) does not match the manifest (shape {p['shape']}, "
                    f"vth {n['vth']}, du {n['du']}, dv {n['dv']})"
                )
            if i is not None and (
                not isinstance(i, int) or not 0 <= i < len(m["projections"]) or m["projections"][i]["dst"] != name
            ):
                raise SdmcError(f"{fp}: main projection {i!r} of population {name!r} is not one of its projections")
    missing = [k for k in pops if k not in seen]
    if missing:
        raise SdmcError(f"{path}: population(s) {missing[:5]} lie in no netx segment")
    return arrays


def load_export(path: str | os.PathLike) -> tuple[LoihiNet, HostPlan, dict]:
    """Read an export directory back: the LoihiNet, its HostPlan and the manifest.  Every array is read once
    (the segment files' while checking them, :func:`check_export`); weights keep their stored int8."""
    import h5py

    path = Path(path)
    m, arrays = _read_checked(path)
    handles: dict[str, h5py.File] = {}

    def data(ref: dict) -> np.ndarray:
        key = (ref["file"], ref["dataset"])
        if key not in arrays:
            if ref["file"] not in handles:
                handles[ref["file"]] = h5py.File(path / ref["file"], "r")
            arrays[key] = np.asarray(handles[ref["file"]][ref["dataset"]][()])
        return arrays[key]

    try:
        sources = tuple(Source(s["name"], tuple(s["shape"]), int(s["bits"])) for s in m["sources"])
        pops = []
        for p in m["populations"]:
            n = p["neuron"]
            w = data(p["bias"]).astype(np.int64) if p.get("bias") else None
            pops.append(
                Population(
                    p["name"],
                    tuple(p["shape"]),
                    Cuba(vth=n["vth"], du=n["du"], dv=n["dv"], bias_exp=n["bias_exp"]),
                    bias=w,
                    depth=int(p["depth"]),
                )
            )
        projs = []
        for p in m["projections"]:
            w = data(p["weight"]) if p["kind"] != "identity" else None
            if w is not None and p["kind"] == "conv" and w.ndim == 5:
                w = w[..., 0]
            projs.append(
                Projection(
                    p["src"],
                    p["dst"],
                    p["kind"],
                    w,
                    tuple(p["stride"]),
                    tuple(p["padding"]),
                    tuple(p["dilation"]),
                    int(p["groups"]),
                    int(p["upsample"]),
                    int(p["delay"]),
                    p["name"],
                )
            )
    finally:
        for f in handles.values():
            f.close()
    meta = dict(m.get("meta") or {})
    meta["scales"] = {p["name"]: p["scale"] for p in m["populations"]}
    meta["thresholds"] = {p["name"]: p["theta"] for p in m["populations"]}
    net = LoihiNet(sources, tuple(pops), tuple(projs), tuple(m["outputs"]), meta=meta)
    check_net(net)
    g = ir.check(ir.load(path / m["host"]["graph"]))
    plan = HostPlan(
        g,
        tuple(HostCurrent.from_json(c) for c in m["host"]["currents"]),
        tuple(m["host"]["outputs"]),
        tuple(m["host"].get("spike_inputs", ())),
    )
    for name in plan.outputs + tuple(t for c in plan.currents for t in c.terms):
        if name not in g.nodes:
            raise SdmcError(f"{path}: host plan names node {name!r}, which the host graph lacks")
    for name in plan.outputs:
        if tuple(g.nodes[name].type.shape) != tuple(net.node(name).shape):
            raise SdmcError(
                f"{path}: host graph node {name!r} has shape {list(g.nodes[name].type.shape)}, the "
                f"population {list(net.node(name).shape)}"
            )
    return net, plan, m
