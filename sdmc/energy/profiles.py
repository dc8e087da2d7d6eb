"""Energy profiles: the cost in picojoules of each operation class, as data files with citations.

Built-in profiles live in ``sdmc/energy/profiles/*.json`` (``45nm-fp32``, ``45nm-fp16``, ``45nm-int8``,
``loihi1``).  A user profile is a JSON file of the same form::

    {
      "name": "my-chip",                      # required, a short identifier
      "unit": "pJ",                           # optional; "pJ" (default), "fJ" or "nJ"
      "costs": {                              # required; numbers >= 0 in `unit`
        "mac": 4.6,                           #   required: one multiply-accumulate (real-valued input)
        "ac": 0.9,                            #   required: one synaptic operation (accumulate on a spike)
        "add": 0.9,                           #   optional (default: ac): one real elementwise addition
        "neuron_update": 0.9,                 #   optional (default: ac): one neuron state update per step
        "spike": 0.0                          #   optional (default: 0): sending one spike
      },
      "description": "...", "citation": "...", "notes": {...}, "measured": false   # optional
    }

Energy of a layer = sum over classes of count(class) * cost(class).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

PROFILE_DIR = Path(__file__).with_name("profiles")
COST_CLASSES = ("mac", "ac", "add", "neuron_update", "spike")
_UNITS = {"pJ": 1.0, "fJ": 1e-3, "nJ": 1e3}


@dataclass(frozen=True)
class EnergyProfile:
    """Per-operation energies in pJ: ``mac``, ``ac`` (synaptic op), ``add``, ``neuron_update``, ``spike``."""

    name: str
    mac: float
    ac: float
    add: float
    neuron_update: float
    spike: float = 0.0
    description: str = ""
    citation: str = ""
    measured: bool = False
    notes: dict[str, str] = field(default_factory=dict, compare=False)

    def cost(self, cls: str) -> float:
        return float(getattr(self, cls))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": "pJ",
            "costs": {c: self.cost(c) for c in COST_CLASSES},
            "description": self.description,
            "citation": self.citation,
            "measured": self.measured,
            "notes": dict(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "profile") -> EnergyProfile:
        """Validate a profile dictionary; every problem is a :class:`ConfigError` naming ``where`` and the key."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: an energy profile must be a JSON object, got {type(d).__name__}")
        known = {"name", "unit", "costs", "description", "citation", "measured", "notes"}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad}; allowed: {sorted(known)}")
        name = d.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: 'name' must be a non-empty string")
        unit = d.get("unit", "pJ")
        if unit not in _UNITS:
            raise ConfigError(f"{where}: 'unit' must be one of {sorted(_UNITS)}, got {unit!r}")
        costs = d.get("costs")
        if not isinstance(costs, dict):
            raise ConfigError(f"{where}: 'costs' must be an object with at least 'mac' and 'ac'")
        bad = sorted(set(costs) - set(COST_CLASSES))
        if bad:
            raise ConfigError(f"{where}: costs: unknown operation class(es) {bad}; allowed: {list(COST_CLASSES)}")
        for req in ("mac", "ac"):
            if req not in costs:
                raise ConfigError(f"{where}: costs.{req} is required")
        vals = {}
        for k, v in costs.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"{where}: costs.{k} must be a finite number >= 0, got {v!r}")
            vals[k] = float(v) * _UNITS[unit]
        vals.setdefault("add", vals["ac"])
        vals.setdefault("neuron_update", vals["ac"])
        vals.setdefault("spike", 0.0)
        notes = d.get("notes", {})
        if not isinstance(notes, dict):
            raise ConfigError(f"{where}: 'notes' must be an object")
        return cls(
            name=name,
            description=str(d.get("description", "")),
            citation=str(d.get("citation", "")),
            measured=bool(d.get("measured", False)),
            notes={str(k): str(v) for k, v in notes.items()},
            **vals,
        )


def builtin_profiles() -> list[str]:
    """Names of the shipped profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def load_profile(spec: str | os.PathLike | EnergyProfile | dict) -> EnergyProfile:
    """A built-in profile by name, a user JSON file by path, a dict, or an :class:`EnergyProfile` as is."""
    if isinstance(spec, EnergyProfile):
        return spec
    if isinstance(spec, dict):
        return EnergyProfile.from_dict(spec)
    s = str(spec)
    path = PROFILE_DIR / f"{s}.json" if s in builtin_profiles() else Path(s)
    if not path.is_file():
        raise ConfigError(
            f"energy profile {s!r}: not a built-in profile ({', '.join(builtin_profiles())}) and no such file"
        )
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"energy profile {path}: not valid JSON: {e}") from None
    return EnergyProfile.from_dict(d, where=f"energy profile {path}")
