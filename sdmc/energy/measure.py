"""Measuring activity on real inputs: firing rates per neuron layer and exact synaptic events per layer.

``FiringRateMonitor`` is a context manager that hooks an eager model (spikingjelly neurons: output
spikes; Conv2d / Conv3d / Linear: their inputs) and accumulates, per key ``k``::

    neuron n:   spikes[k][t]  = sum over samples of sum_{c,y,x} s[t, b, c, y, x]     (t = SNN step)
    synapse l:  nnz[k], numel[k], sops[k]  (sops exact, see :func:`sdmc.energy.count.conv_sops`)

The key is the diffusion step in the model's ``t`` argument, or (``calls_per_run=NFE``) the index of the
call within a sampling run, ``k = call mod NFE``, so that a whole trajectory is recorded call by call.
Module paths are the IR node names the frontend gives (``downblocks.0.neuron1``, ``conv.tsmconv``).
It is cheap enough to leave on while sampling or training (a few reductions per layer per call).

Two ways to get the inputs a denoiser sees:

- **trajectory** (:func:`measure_trajectory`, the default of ``sdmc energy``): run the solver from
  noise and record every call: the deployment distribution itself, no dataset needed;
- **data** (:func:`measure_model`): dataset images noised with ``q_sample`` (:func:`calibration_batches`)
  to a subsample of the diffusion steps a solver visits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError, SdmcError
from .count import conv_sops, linear_sops


@dataclass
class SynapseStats:
    """Accumulated input activity of one synaptic layer, per diffusion step ``k``:
    ``[samples, nnz, numel, sops]`` (sums over samples; nnz / numel over every execution)."""

    by_step: dict[int, np.ndarray] = field(default_factory=lambda: defaultdict(lambda: np.zeros(4)))

    def total(self) -> np.ndarray:
        return sum(self.by_step.values(), np.zeros(4))

    def _sums(self, k: int | None) -> tuple[float, float, float, float]:
        """``(samples, nnz, numel, sops)`` of step ``k`` (every step when None)."""
        return tuple(float(v) for v in (self.total() if k is None else self.by_step[k]))

    def rate(self, k: int | None = None) -> float:
        """Fraction of non-zero input entries (the input firing rate for spike inputs)."""
        _, nnz, numel, _ = self._sums(k)
        return nnz / numel if numel else 0.0

    def sops(self, k: int | None = None) -> float:
        """Synaptic operations per sample per call."""
        samples, _, _, sops = self._sums(k)
        return sops / samples if samples else 0.0


@dataclass
class NeuronStats:
    """Accumulated spikes of one neuron layer: per diffusion step ``k``, ``samples`` and
    ``spikes[T]`` (sums over samples); ``size`` neurons per sample."""

    T: int
    size: int
    samples: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    spikes: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, k: int, n: int, per_t: np.ndarray) -> None:
        self.samples[k] += n
        self.spikes[k] = self.spikes.get(k, np.zeros(self.T)) + per_t

    def rate_per_step(self, k: int | None = None) -> np.ndarray:
        """Firing rate (spikes per neuron) at each SNN step ``[T]``."""
        ks = list(self.samples) if k is None else [k]
        n = sum(self.samples[j] for j in ks)
        if not n or not self.size:
            return np.zeros(self.T)
        return sum(self.spikes[j] for j in ks) / (n * self.size)

    def rate(self, k: int | None = None) -> float:
        """Mean firing rate over SNN steps."""
        return float(self.rate_per_step(k).mean())


@dataclass
class Activity:
    """Everything measured: ``synapses`` and ``neurons`` by IR node name, ``T``, and the keys seen.

    ``keyed_by``: ``"step"`` (keys are diffusion steps) or ``"call"`` (keys are call indices within a
    sampling trajectory; ``call_t[i]`` is the diffusion step of call ``i``).
    """

    T: int
    synapses: dict[str, SynapseStats] = field(default_factory=dict)
    neurons: dict[str, NeuronStats] = field(default_factory=dict)
    keyed_by: str = "step"
    call_t: dict[int, float] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        """The keys seen: diffusion steps from noisy to clean, or call indices in calling order."""
        ks: set[int] = set()
        for s in self.synapses.values():
            ks |= set(s.by_step)
        for n in self.neurons.values():
            ks |= set(n.samples)
        return sorted(ks, reverse=self.keyed_by == "step")

    @classmethod
    def uniform(cls, costs: dict, rate: float, T: int, step: int = -1) -> Activity:
        """A what-if activity: every synapse input non-zero with probability ``rate`` (real inputs too, as
        Eq. 20 assumes) and every neuron firing at ``rate``; recorded under diffusion step ``step``."""
        from .count import uniform_sops

        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"uniform activity: rate must be in [0, 1], got {rate}")
        act = cls(T=T)
        for name, c in costs.items():
            if c.cls == "synapse":
                numel = math.prod(c.meta["in_shape"]) * c.executions
                st = act.synapses.setdefault(name, SynapseStats())
                st.by_step[step] += np.array([1.0, rate * numel, numel, uniform_sops(c, rate)])
            elif c.cls == "neuron":
                st = act.neurons.setdefault(name, NeuronStats(T=T, size=c.per_exec))
                st.add(step, 1, np.full(T, rate * c.per_exec))
        return act

    def mean_rate(self, k: int | None = None) -> float:
        """Firing rate over all neurons (weighted by layer size)."""
        num = den = 0.0
        for n in self.neurons.values():
            num += n.rate(k) * n.size
            den += n.size
        return num / den if den else 0.0

    # ---- accumulation (shared by the eager hooks and the golden-simulator path)
    def add_synapse(self, name: str, x: torch.Tensor, ks: torch.Tensor, info: dict[str, Any]) -> None:
        """Record the input ``x`` ``[k, B, *shape]`` of synapse ``name`` for samples at diffusion steps ``ks`` [B]."""
        B = x.shape[1]
        if info["op"] == "linear":
            sops = linear_sops(x, info["out_features"])
        else:
            sops = conv_sops(
                x,
                info["out_channels"],
                info["kernel"],
                info["stride"],
                info["padding"],
                info["dilation"],
                info["groups"],
            )
        nnz = (x != 0).transpose(0, 1).reshape(B, -1).sum(1, dtype=torch.float64).cpu()
        sops = sops.cpu()
        ks = ks.cpu()
        per = x.numel() // B
        st = self.synapses.setdefault(name, SynapseStats())
        for k in ks.unique().tolist():
            m = ks == k
            st.by_step[int(k)] += np.array(
                [int(m.sum()), float(nnz[m].sum()), per * int(m.sum()), float(sops[m].sum())]
            )

    def add_neuron(self, name: str, s: torch.Tensor, ks: torch.Tensor) -> None:
        """Record the output spikes ``s`` ``[T, B, *shape]`` of neuron layer ``name``."""
        T, B = s.shape[:2]
        size = int(s[0, 0].numel())
        st = self.neurons.setdefault(name, NeuronStats(T=T, size=size))
        st.size = size
        per = s.reshape(T, B, -1).sum(2, dtype=torch.float64).cpu()  # [T, B]
        ks = ks.cpu()
        for k in ks.unique().tolist():
            m = ks == k
            st.add(int(k), int(m.sum()), per[:, m].sum(1).cpu().numpy())


def synapse_info(module: nn.Module) -> dict[str, Any] | None:
    """What :meth:`Activity.add_synapse` needs to count a torch conv / linear module's events."""
    if isinstance(module, nn.Linear):
        return dict(op="linear", out_features=module.out_features)
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        return dict(
            op="conv2d" if isinstance(module, nn.Conv2d) else "conv3d",
            out_channels=module.out_channels,
            kernel=tuple(module.kernel_size[:2]),
            stride=tuple(module.stride[:2]),
            padding=tuple(module.padding[:2]),
            dilation=tuple(module.dilation[:2]),
            groups=module.groups,
        )
    return None


def call_keys(act: Activity, B: int, t: Any, call: int, calls_per_run: int | None) -> torch.Tensor:
    """The keys ``[B]`` of one model call: the diffusion step of each sample, or (``calls_per_run``)
    ``call mod calls_per_run`` for all, recording that call's diffusion step in ``act.call_t``."""
    if isinstance(t, torch.Tensor) and t.numel() == B:
        steps = t.detach().reshape(B).cpu().double()
    elif isinstance(t, (int, float)) or (isinstance(t, torch.Tensor) and t.numel() == 1):
        steps = torch.full((B,), float(t), dtype=torch.float64)
    else:
        steps = torch.full((B,), -1.0, dtype=torch.float64)
    if calls_per_run is None:
        return steps.long()
    k = call % calls_per_run
    act.call_t.setdefault(k, float(steps.mean()))
    return torch.full((B,), k, dtype=torch.long)


class FiringRateMonitor:
    """Context manager recording firing rates and synaptic events of an eager spiking model.

    >>> with FiringRateMonitor(model) as mon:
    ...     model(x_t, t)
    >>> mon.activity.neurons["downblocks.0.neuron1"].rate()

    ``synapses=False`` records only the neurons (cheapest; enough for a training-time monitor).
    ``layers``: restrict to these module paths.  The model's ``forward(x, t)`` second argument gives
    the diffusion step of each sample (``-1`` when absent), the key of what is recorded; with
    ``calls_per_run=NFE`` the key is instead the call's index within its sampling run (``call mod NFE``:
    a batch of a sampling run calls the model NFE times), and ``activity.call_t`` the step of each call.
    """

    def __init__(
        self,
        model: nn.Module,
        synapses: bool = True,
        layers: Iterable[str] | None = None,
        calls_per_run: int | None = None,
    ) -> None:
        from spikingjelly.activation_based import neuron as sj_neuron

        if calls_per_run is not None and int(calls_per_run) < 1:
            raise ConfigError(f"FiringRateMonitor: calls_per_run must be >= 1, got {calls_per_run}")
        self.model = model
        self._neuron_types = (sj_neuron.BaseNode,)
        self.synapses = synapses
        self.layers = set(layers) if layers is not None else None
        T = getattr(model, "timestep", None) or getattr(getattr(model, "config", None), "snn_steps", 1)
        self.calls_per_run = None if calls_per_run is None else int(calls_per_run)
        self.calls = 0
        self.activity = Activity(T=int(T), keyed_by="step" if calls_per_run is None else "call")
        self._hooks: list[Any] = []
        self._ks: torch.Tensor | None = None

    def _root_pre(self, mod, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        t = args[1] if len(args) > 1 else kwargs.get("t")
        self._ks = call_keys(self.activity, x.shape[0], t, self.calls, self.calls_per_run)
        self.calls += 1

    def _lead(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` with N = k*B (k leading, as the UNets fold T) to ``[k, B, ...]``."""
        B = self._ks.numel()
        N = x.shape[0]
        if N % B:
            raise SdmcError(f"FiringRateMonitor: a layer input has leading size {N}, not a multiple of the batch {B}")
        return x.reshape(N // B, B, *x.shape[1:])

    def _syn_hook(self, name: str, info: dict[str, Any]):
        def fn(mod, args):
            if self._ks is None:
                return
            x = args[0].detach()
            if info["op"] == "conv3d":  # [B, C, H, W, T] -> [T, B, C, H, W]
                x = x.permute(4, 0, 1, 2, 3)
            else:
                x = self._lead(x)
            self.activity.add_synapse(name, x, self._ks, info)

        return fn

    def _neuron_hook(self, name: str):
        def fn(mod, args, out):
            if self._ks is None:
                return
            s = out.detach()
            # a single-step neuron gives one step [B, ...] (or steps folded [T*B, ...]); a multi-step one [T, B, ...].
            # Its step_mode says which: the shape cannot when a channel count equals the batch
            if getattr(mod, "step_mode", "m") == "s" or s.dim() < 2 or s.shape[1] != self._ks.numel():
                s = self._lead(s)
            self.activity.add_neuron(name, s, self._ks)

        return fn

    def _if_hook(self, name: str):
        def fn(mod, args, out):
            if self._ks is not None:
                self.activity.add_neuron(name, self._lead((out.detach() != 0).to(out.dtype)), self._ks)

        return fn

    def __enter__(self) -> FiringRateMonitor:
        from ..convert import IFNeuron

        self._hooks.append(self.model.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        for name, m in self.model.named_modules():
            if self.layers is not None and name not in self.layers:
                continue
            if isinstance(m, self._neuron_types):
                self._hooks.append(m.register_forward_hook(self._neuron_hook(name)))
            elif isinstance(m, IFNeuron):  # converted QANN: output s * theta on [T*B, ...]; events are s != 0
                self._hooks.append(m.register_forward_hook(self._if_hook(name)))
            elif self.synapses:
                info = synapse_info(m)
                if info is not None:
                    self._hooks.append(m.register_forward_pre_hook(self._syn_hook(name, info)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._ks = None

    def summary(self) -> dict[str, float]:
        """``{neuron layer: mean firing rate}`` so far."""
        return {k: v.rate() for k, v in self.activity.neurons.items()}


# ----------------------------------------------------------------------------------- calibration
def calibration_steps(num_train: int, solver: str = "ddim", steps: int = 50, keep: int = 8) -> list[int]:
    """The diffusion steps a ``solver`` with ``steps`` sampling steps calls the model at, evenly
    subsampled to at most ``keep`` of them (first and last kept)."""
    from ..config import DiffusionConfig
    from ..diffusion.schedule import NoiseSchedule
    from ..diffusion.solvers import make_solver

    s = make_solver(solver, NoiseSchedule(DiffusionConfig(num_timesteps=num_train)))
    s.set_timesteps(steps)
    ts = [int(v) for v in s.timesteps.tolist()]
    if keep < 1:
        raise ConfigError(f"calibration: keep must be >= 1, got {keep}")
    if len(ts) <= keep:
        return ts
    idx = np.unique(np.round(np.linspace(0, len(ts) - 1, keep)).astype(int))
    return [ts[i] for i in idx]


def calibration_batches(
    images: torch.Tensor, steps: list[int], schedule, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each diffusion step ``k`` in ``steps``: ``(x_k, t)`` with ``x_k = q_sample(images, k, noise)``
    (a fixed noise draw per step from ``seed``) and ``t`` filled with ``k``."""
    g = torch.Generator().manual_seed(seed)
    for k in steps:
        noise = torch.randn(images.shape, generator=g, dtype=images.dtype)
        t = torch.full((images.shape[0],), int(k), dtype=torch.long)
        yield schedule.q_sample(images, t, noise.to(images.device)), t.to(images.device)


def dataset_images(
    name: str, n: int, img_size: int, img_ch: int, root: str | None = None, seed: int = 0
) -> torch.Tensor:
    """``n`` images ``[n, C, H, W]`` in [-1, 1] from dataset ``name`` (a fixed random subset); ``noise``:
    uniform random images (for models whose dataset is not at hand)."""
    if name == "noise":  # dataset-free fallback: uniform random images in [-1, 1]
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, img_ch, img_size, img_size, generator=g) * 2 - 1
    from ..data import load_dataset

    ds = load_dataset(name, root=root, img_size=img_size, train=True)
    if len(ds) == 0:
        raise SdmcError(f"calibration: dataset {name!r} is empty")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    x = torch.stack([ds[int(i)][0] for i in idx])
    if x.shape[1:] != (img_ch, img_size, img_size):
        raise DataError(
            f"calibration: dataset {name!r} gives images {list(x.shape[1:])}, the model needs "
            f"{[img_ch, img_size, img_size]} (pick a matching --data)"
        )
    return x


def measure_model(
    model: nn.Module,
    images: torch.Tensor,
    steps: list[int],
    schedule,
    batch_size: int = 32,  # pragma: no mutate (a chunk size: samples are independent in eval mode)
    seed: int = 0,
) -> Activity:
    """Run ``model`` on ``images`` noised to every step in ``steps`` under a :class:`FiringRateMonitor`."""
    device = next(model.parameters()).device
    model.eval()
    with FiringRateMonitor(model) as mon, torch.no_grad():
        for x, t in calibration_batches(images.to(device), steps, schedule, seed):
            for i in range(0, x.shape[0], batch_size):
                model(x[i : i + batch_size], t[i : i + batch_size])
    return mon.activity


def _record_golden(act: Activity, graph, costs: dict, vals: dict[str, np.ndarray], ks: torch.Tensor) -> None:
    """Add one golden-simulator run's values (``all_values``) to ``act`` under keys ``ks`` [B]."""
    for name, c in costs.items():
        if c.cls == "synapse":
            v = torch.from_numpy(vals[c.input])
            v = v if graph.nodes[c.input].type.per_step else v.unsqueeze(0)
            act.add_synapse(name, v, ks, dict(op=c.op, **c.meta))
        elif c.cls == "neuron":
            act.add_neuron(name, torch.from_numpy(np.abs(vals[name])), ks)  # signed IF: -1 spikes count


def _golden_feed(graph, x: torch.Tensor, t: torch.Tensor) -> dict[str, np.ndarray]:
    return {n.name: (x.double().numpy() if n.type.dtype.startswith("float") else t.numpy()) for n in graph.input_nodes}


def measure_graph(graph, images: np.ndarray | torch.Tensor, steps: list[int], schedule, seed: int = 0) -> Activity:
    """The same measurement on an IR graph with the golden simulator (slow: for small models)."""
    from ..sim import golden
    from .count import count_graph

    costs = count_graph(graph)
    act = Activity(T=graph.T)
    images = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    for x, t in calibration_batches(images, steps, schedule, seed):
        _record_golden(act, graph, costs, golden.run(graph, _golden_feed(graph, x, t), all_values=True), t)
    return act


def measure_network(
    graph,
    n: int,
    batch_size: int = 32,  # pragma: no mutate (a chunk size: test_measure_network_batches_give_the_counts_of_one_batch)
    seed: int = 0,
) -> Activity:
    """Activity of a graph that is not a denoiser (no integer diffusion-step input: a classifier over
    ``[T, B, ...]`` sequences, say) on ``n`` inputs from :func:`sdmc.sim.inputs.noised_inputs` (random spikes
    with p = 0.3 for spike inputs, standard normal values, or lightly noised digits for a ``[C, H, W]`` image),
    run by the golden simulator; one key, 0 (one forward pass = one call)."""
    from ..sim import golden
    from ..sim.inputs import noised_inputs
    from .count import count_graph

    costs = count_graph(graph)
    act = Activity(T=graph.T)
    inputs = noised_inputs(graph, n, 0, seed)
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        feed = {k: (v[:, lo:hi] if graph.nodes[k].type.per_step else v[lo:hi]) for k, v in inputs.items()}
        _record_golden(act, graph, costs, golden.run(graph, feed, all_values=True), torch.zeros(hi - lo).long())
    return act


class GoldenRecorder:
    """An IR graph as a denoiser ``f(x, t)`` (the golden simulator) that records every call's activity
    into ``activity`` keyed by the call's index within a run of ``calls_per_run`` calls."""

    def __init__(self, graph, calls_per_run: int) -> None:
        from .count import count_graph

        self.graph, self.costs, self.calls_per_run = graph, count_graph(graph), int(calls_per_run)
        self.activity = Activity(T=graph.T, keyed_by="call")
        self.calls = 0
        (self.output,) = [n.name for n in graph.output_nodes]

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from ..sim import golden

        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0]).long().cpu()
        ks = call_keys(self.activity, x.shape[0], t, self.calls, self.calls_per_run)
        self.calls += 1
        vals = golden.run(self.graph, _golden_feed(self.graph, x.cpu(), t), all_values=True)
        _record_golden(self.activity, self.graph, self.costs, vals, ks)
        return torch.from_numpy(vals[self.output]).to(x.dtype).to(x.device)


def measure_trajectory(
    model,
    schedule,
    solver: str = "ddim",
    steps: int = 50,
    n: int = 16,
    batch_size: int = 16,  # pragma: no mutate (a chunk size: counts do not depend on it; each image is seeded on its own)
    seed: int = 0,
    threshold: float | None = None,
    device: str | torch.device | None = None,
    shape: tuple[int, ...] | None = None,
    **solver_kwargs: Any,
) -> tuple[Activity, torch.Tensor]:
    """Activity along the model's own sampling trajectories: ``n`` images drawn from noise with ``solver``
    in ``steps`` steps (:func:`sdmc.diffusion.sampling.sample_images`, seeds as there), every one of the
    NFE calls recorded under its call index (``activity.call_t``: its diffusion step).

    ``model``: an eager spiking ``nn.Module`` (hooked by :class:`FiringRateMonitor`) or an IR graph
    (run by the golden simulator, :class:`GoldenRecorder`; slow, for small graphs).  With ``threshold``
    the run uses threshold guidance.  The energy of one image is then the exact sum over its calls,
    ``E_image = sum_i E(call i)``.  Returns ``(activity, images [n, C, H, W])``.
    """
    from ..diffusion.sampling import sample_images
    from ..diffusion.solvers import make_solver
    from ..ir import Graph

    sol = make_solver(solver, schedule, **solver_kwargs)
    sol.set_timesteps(int(steps))
    kw = dict(solver=sol, steps=steps, batch_size=batch_size, seed=seed, progress=False, threshold=threshold)
    if isinstance(model, Graph):
        if threshold is not None:
            raise ConfigError(
                "trajectory measurement: threshold guidance of an IR graph: recompile it with the threshold"
            )
        rec = GoldenRecorder(model, sol.nfe)
        img = next(i for i in model.input_nodes if i.type.dtype.startswith("float")).type.shape
        images = sample_images(rec, schedule, n, shape=shape or tuple(img), dtype=torch.float64, **kw)
        return rec.activity, images.float()
    dev = device if device is not None else next(model.parameters()).device
    with FiringRateMonitor(model, calls_per_run=sol.nfe) as mon:
        images = sample_images(model, schedule, n, device=dev, shape=shape, **kw)
    return mon.activity, images
