"""Neuron recognition: which spikingjelly neuron modules have dynamics the IR knows, and their IR node.

A module is a neuron of known dynamics when its class is (or derives from) one of :data:`KNOWN` and overrides
none of the methods that define what it computes (:data:`DYNAMICS`): a user subclass that only changes
``__init__`` defaults is an IF/LIF/PLIF; one that rewrites ``neuronal_charge`` is refused, naming the
method.  What the IR records::

    IFNode / SimpleIFNode              if    h[t] = v[t-1] + x[t]
    LIFNode / SimpleLIFNode            lif   tau, decay_input both ways
    ParametricLIFNode                  plif  w (1/tau = sigmoid(w)), decay_input both ways
    v_reset a number / None            hard reset to v_reset / soft reset (subtract the threshold)
    detach_reset                       recorded (backward only; the forward is the same)
    surrogate ATan / Sigmoid (alpha)   recorded (backward only); other surrogates are refused

The forward of every surrogate with ``spiking=True`` is the Heaviside step, so golden simulation does not
depend on it; the torch backend trains with the recorded surrogate.
"""

from __future__ import annotations

from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate
from torch import nn

from sdmc import ir

KNOWN: dict[type, str] = {
    sj_neuron.IFNode: "if",
    sj_neuron.LIFNode: "lif",
    sj_neuron.ParametricLIFNode: "plif",
    sj_neuron.SimpleIFNode: "if",
    sj_neuron.SimpleLIFNode: "lif",
}
NEURON_BASES: tuple[type, ...] = (sj_neuron.BaseNode, sj_neuron.SimpleBaseNode)
DYNAMICS = (
    "forward",
    "single_step_forward",
    "multi_step_forward",
    "single_step_functional_forward",
    "multi_step_functional_forward",
    "neuronal_charge",
    "neuronal_fire",
    "neuronal_reset",
    "materialize_states",
)
SURROGATES: dict[type, str] = {sj_surrogate.ATan: "atan", sj_surrogate.Sigmoid: "sigmoid"}


class NotANeuron(Exception):
    """Raised with the reason a spiking module cannot be lowered (the caller names module and path)."""


def known_base(cls: type) -> type | None:
    """The first class in ``cls``'s MRO whose dynamics the IR knows, or ``None``."""
    return next((c for c in cls.__mro__ if c in KNOWN), None)


def neuron_node(m: nn.Module, name: str, x: str, w_key: str | None) -> ir.NeuronNode:
    """The IR node of neuron module ``m`` reading value ``x``; ``w_key`` names a PLIF's ``w`` parameter.

    Raises :class:`NotANeuron` with the reason when the dynamics are unknown or a setting is unsupported."""
    cls = type(m)
    base = known_base(cls)
    if base is None:
        raise NotANeuron(
            f"neuron {cls.__name__} has dynamics sdmc does not know (known: IFNode, LIFNode, "
            "ParametricLIFNode and subclasses that keep their dynamics)"
        )
    changed = [k for k in DYNAMICS if getattr(cls, k, None) is not getattr(base, k, None)]
    if changed:
        raise NotANeuron(
            f"neuron {cls.__name__} derives from {base.__name__} but overrides {', '.join(changed)}: "
            "its dynamics are not known"
        )
    if getattr(m, "_neuron_precision", None) is not None:
        raise NotANeuron(f"neuron {cls.__name__} with reduced neuron precision {m._neuron_precision}")
    sf = m.surrogate_function
    kind = next((v for k, v in SURROGATES.items() if isinstance(sf, k) and type(sf) is k), None)
    if kind is None:
        raise NotANeuron(f"surrogate {type(sf).__name__} (supported: {', '.join(c.__name__ for c in SURROGATES)})")
    if not getattr(sf, "spiking", True):
        raise NotANeuron(f"surrogate {type(sf).__name__}(spiking=False) outputs a smooth value, not spikes")
    common = dict(
        name=name,
        inputs=(x,),
        threshold=_number(m.v_threshold, "v_threshold"),
        v_reset=None if m.v_reset is None else _number(m.v_reset, "v_reset"),
        surrogate=kind,
        alpha=float(sf.alpha),
        detach_reset=bool(m.detach_reset),
    )
    op = KNOWN[base]
    if op == "if":
        return ir.IF(**common)
    if op == "lif":
        return ir.LIF(tau=_number(m.tau, "tau"), decay_input=bool(m.decay_input), **common)
    if w_key is None:
        raise NotANeuron(f"neuron {cls.__name__}: its parameter 'w' is not in the model's state_dict")
    return ir.PLIF(w=w_key, decay_input=bool(m.decay_input), **common)


def _number(v, what: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError):
        raise NotANeuron(f"{what} must be one number, got {type(v).__name__}") from None
