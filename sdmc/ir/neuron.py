"""Spiking neurons (spikingjelly multi-step semantics).  Input: a per-step ``real`` or ``graded`` current;
output: per-step ``spike`` of the same shape.  The state starts at ``v[-1] = v_init``, by default
``v_reset`` (0 for soft reset), at every network call.  With ``h[t]`` the charged potential::

    s[t] = (h[t] >= threshold)
    v[t] = s[t] * v_reset + (1 - s[t]) * h[t]      hard reset (v_reset is a number)
    v[t] = h[t] - s[t] * threshold                  soft reset (v_reset is None)

``surrogate`` / ``alpha`` record the surrogate gradient of the Heaviside step (``atan``:
``ds/dh = alpha/2 / (1 + (pi/2 * alpha * (h - threshold))**2)``); the forward pass does not use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .families import NEURON
from .graph import FLOAT_DTYPES, GRADED, PER_STEP, SPIKE, Node, ValueType, param, register


@dataclass(frozen=True, kw_only=True)
class NeuronNode(Node):
    """Common fields and type rule of the neurons (every subclass is in the ``NEURON`` family)."""

    families = (NEURON,)

    threshold: float = 1.0
    v_reset: float | None = 0.0
    surrogate: str = "atan"
    alpha: float = 2.0
    detach_reset: bool = False
    v_init: float | None = None

    def infer(self, ins, graph):
        x = ins[0]
        src = self.inputs[0]
        if x.kind == SPIKE:
            raise self.fail(
                f"kind mismatch: input {src!r} is a spike value; a neuron needs a real or graded "
                "current (put a synapse, e.g. a conv, in between)"
            )
        if x.timing != PER_STEP:
            raise self.fail(
                f"timing mismatch: input {src!r} is static; a neuron needs a per-step input (insert a 'repeat' node)"
            )
        if x.dtype not in FLOAT_DTYPES:
            raise self.fail(f"input {src!r} has dtype {x.dtype}; a floating-point current is required")
        return ValueType(x.shape, x.dtype, SPIKE, PER_STEP)


@register
@dataclass(frozen=True, kw_only=True)
class IF(NeuronNode):
    """Integrate-and-fire: ``h[t] = v[t-1] + x[t]`` (spikingjelly ``IFNode``).

    ``signed`` (Fast-SNN's inhibitory spike; soft reset only): with ``c[t]`` the net spike count so far::

        s[t] = [h[t] >= threshold] - [h[t] < 0 and c[t-1] > 0];  c[t] = c[t-1] + s[t]
        v[t] = h[t] - s[t] * threshold

    Its output is ``graded`` (values -1, 0, 1), not ``spike``.
    """

    op = "if"
    signed: bool = False

    def infer(self, ins, graph):
        t = super().infer(ins, graph)
        if not self.signed:
            return t
        if self.v_reset is not None:
            raise self.fail("signed spikes need reset by subtraction (v_reset=None)")
        return ValueType(t.shape, t.dtype, GRADED, t.timing)


@register
@dataclass(frozen=True, kw_only=True)
class LIF(NeuronNode):
    """Leaky integrate-and-fire (spikingjelly ``LIFNode``), ``vr = v_reset or 0``::

    decay_input:      h[t] = v[t-1] + (x[t] - (v[t-1] - vr)) / tau
    not decay_input:  h[t] = v[t-1] - (v[t-1] - vr) / tau + x[t]
    """

    op = "lif"
    tau: float = 2.0
    decay_input: bool = True

    def infer(self, ins, graph):
        if not self.tau > 1.0:
            raise self.fail(f"tau must be > 1, got {self.tau}")
        return super().infer(ins, graph)


@register
@dataclass(frozen=True, kw_only=True)
class PLIF(NeuronNode):
    """Parametric LIF (spikingjelly ``ParametricLIFNode``): as :class:`LIF` with ``1/tau = sigmoid(w)``::

        decay_input:      h[t] = v[t-1] + (x[t] - (v[t-1] - vr)) * sigmoid(w)
        not decay_input:  h[t] = v[t-1] - (v[t-1] - vr) * sigmoid(w) + x[t]

    ``w`` names a scalar parameter.
    """

    op = "plif"
    w: str = param()
    decay_input: bool = True

    def infer(self, ins, graph):
        s = self.param_shape(graph, "w")
        if s not in ((), (1,)):
            raise self.fail(f"shape mismatch: w {self.w!r} must be a scalar, got shape {list(s)}")
        return super().infer(ins, graph)


NEURON_OPS = NEURON  # the name the passes and tests have always used
