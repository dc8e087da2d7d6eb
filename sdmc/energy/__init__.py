"""Energy and synaptic-operation analysis of spiking diffusion models (``sdmc energy``).

- :mod:`.count`: exact SOPs (``conv_sops``, ``fanout_map``), dense MACs, per-node cost classes of an IR graph.
- :mod:`.measure`: ``FiringRateMonitor`` (hooks; firing rates and events per layer) and calibration sets.
- :mod:`.profiles`: per-operation energies as cited JSON data; user profiles.
- :mod:`.report`: ``analyze(model_or_graph) -> EnergyReport`` (table, JSON, Markdown, CSV, plot).
"""

from __future__ import annotations

from .count import (
    NodeCost,
    ann_counterpart,
    conv_macs,
    conv_sops,
    count_graph,
    count_module_macs,
    eager_dense_macs,
    fanout_map,
    linear_sops,
    model_macs,
)
from .measure import Activity, FiringRateMonitor, calibration_batches, calibration_steps, measure_graph, measure_model
from .profiles import EnergyProfile, builtin_profiles, load_profile
from .report import CONVENTIONS, EnergyReport, analyze, build_report

__all__ = [
    "Activity",
    "CONVENTIONS",
    "EnergyProfile",
    "EnergyReport",
    "FiringRateMonitor",
    "NodeCost",
    "analyze",
    "ann_counterpart",
    "build_report",
    "builtin_profiles",
    "calibration_batches",
    "calibration_steps",
    "conv_macs",
    "conv_sops",
    "count_graph",
    "count_module_macs",
    "eager_dense_macs",
    "fanout_map",
    "linear_sops",
    "load_profile",
    "measure_graph",
    "measure_model",
    "model_macs",
]
