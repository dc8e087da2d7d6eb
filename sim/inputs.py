"""Inputs to simulate a graph on: noised images ``x_t`` at one diffusion step, or random spikes / values.

The accuracy checks of the Loihi backend (``sdmc export --calib``, ``sdmc sim``) run the graph on what a denoiser
sees while sampling, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (:class:`sdmc.diffusion.schedule.NoiseSchedule`).
"""

from __future__ import annotations

import numpy as np

from sdmc import ir
from sdmc.errors import SdmcError


def _schedule(graph: ir.Graph):
    """The graph's recorded diffusion process (``meta['sdmc_config']['diffusion']``), else the default one
    (linear betas 1e-4..0.02 over 1000 steps)."""
    from sdmc.config import DiffusionConfig
    from sdmc.diffusion.schedule import NoiseSchedule

    recorded = (graph.meta.get("sdmc_config") or {}).get("diffusion")
    return NoiseSchedule(DiffusionConfig.from_dict(recorded) if isinstance(recorded, dict) else None)


def noised_inputs(graph: ir.Graph, n: int, step: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` inputs for ``graph`` by input name (float64 / int64).

    A graph whose first input is a static ``[C, H, W]`` image gets ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``
    at diffusion step ``t = step`` (x0 from the bundled digits set when it loads, else uniform in [-1, 1]; gray
    digits are repeated over ``C`` channels) and every further input (the time step) is ``step``.  Any other
    graph gets random spikes (p = 0.3), standard normal values and ``step`` for integer inputs.
    """
    if n < 1:
        raise SdmcError(f"noised_inputs: need at least 1 sample, got {n}")
    x_node = graph.input_nodes[0]
    rng = np.random.default_rng(seed)
    if x_node.type.per_step or len(x_node.type.shape) != 3:
        out = {}
        for node in graph.input_nodes:
            shape = node.type.full_shape(graph.T, n)
            if node.type.dtype.startswith("int"):
                out[node.name] = np.full(shape, step, np.int64)
            elif node.type.kind == "spike":
                out[node.name] = (rng.random(shape) < 0.3).astype(np.float64)
            else:
                out[node.name] = rng.standard_normal(shape)
        return out
    schedule = _schedule(graph)
    if not 0 <= step < schedule.num_timesteps:
        raise SdmcError(f"diffusion step t={step} is outside the schedule's 0..{schedule.num_timesteps - 1}")
    C, H, W = x_node.type.shape
    x0 = rng.uniform(-1, 1, (n, C, H, W))
    try:
        from sdmc.data import load_dataset

        ds = load_dataset("digits", img_size=H)
        x0 = np.stack([ds[int(i)][0].numpy() for i in rng.integers(0, len(ds), n)])
        x0 = np.broadcast_to(x0[:, :1], (n, C, H, W)) if x0.shape[1] != C else x0
    except Exception:  # noqa: BLE001 - the uniform images are the documented fallback
        pass
    abar = float(schedule.alphas_cumprod[step])
    x = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * rng.standard_normal(x0.shape)
    inputs = {x_node.name: x}
    for node in graph.input_nodes[1:]:
        inputs[node.name] = np.full(n, step, np.int64)
    return inputs
