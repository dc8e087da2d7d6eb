"""Op families, defined once (tinygrad's ``GroupOp``).

Every node class lists the families it belongs to in its ``families`` class attribute; :func:`sdmc.ir.register`
adds the op name to each.  Passes, analyses and backends ask ``node.op in ir.SYNAPTIC`` (or ``node in
ir.SYNAPTIC``) instead of keeping their own tuples of op names, so a new op joins every rule of its families by
declaring them on its class::

    @register
    @dataclass(frozen=True, kw_only=True)
    class MaxPool2d(Node):
        op = "maxpool2d"
        families = (TIME_INVARIANT,)

=================  ==============================================================================================
family             meaning (and who relies on it)
=================  ==============================================================================================
``NEURON``         spiking neurons: per-step current in, spikes out, state over T (every backend, the partition)
``SYNAPTIC``       weighted sums ``y = W x (+ b)`` with the output channel on axis 0 of ``weight``: the
                   connections that cost synaptic operations (cost / energy analyses, BN folding, Loihi)
``CONV``           spatial convolutions with ``stride`` / ``padding`` pairs (synapse geometry, fan-out maps)
``CONV2D``         convolutions with a 4-d weight ``[O, C/groups, kh, kw]`` and ``dilation`` / ``groups``:
                   those whose weights can be sliced by input channel and composed (split_concat,
                   compose_residual)
``TIME_INVARIANT`` ops that act on every step alike with no state and no per-step parameters, so
                   ``f(repeat(x)) == repeat(f(x))`` (hoisting static work out of the time loop)
``PER_STEP_PARAMS`` ops with one parameter per step (``y[t] = f_t(x)``): a static input gives a per-step output
``ROUTING``        ops that move values without arithmetic (upsample, reshape, concat)
=================  ==============================================================================================
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


class Family:
    """A named, ordered set of op names, filled by :func:`sdmc.ir.register` from the node classes.

    ``op in family`` accepts an op name or a node; ``family + (...)`` gives a tuple, ``family | other`` a
    frozenset.
    """

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.__doc__ = name, doc
        self._ops: dict[str, None] = {}

    def add(self, op: str) -> None:
        self._ops[op] = None

    def __contains__(self, op: Any) -> bool:
        return getattr(op, "op", op) in self._ops

    def __iter__(self) -> Iterator[str]:
        return iter(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __add__(self, other: Iterable[str]) -> tuple[str, ...]:
        return tuple(self) + tuple(other)

    def __radd__(self, other: Iterable[str]) -> tuple[str, ...]:
        return tuple(other) + tuple(self)

    def __or__(self, other: Iterable[str]) -> frozenset[str]:
        return frozenset(self) | frozenset(other)

    __ror__ = __or__

    def __sub__(self, other: Iterable[str]) -> frozenset[str]:
        return frozenset(self) - frozenset(other)

    def __and__(self, other: Iterable[str]) -> frozenset[str]:
        return frozenset(self) & frozenset(other)

    def __repr__(self) -> str:
        return f"Family({self.name}: {', '.join(self._ops)})"


NEURON = Family("NEURON", "spiking neurons: per-step current in, spikes out, membrane state over T")
SYNAPTIC = Family("SYNAPTIC", "weighted sums y = W x (+ b), output channel on axis 0 of the weight")
CONV = Family("CONV", "spatial convolutions (stride / padding pairs)")
CONV2D = Family("CONV2D", "convolutions with a 4-d weight [O, C/groups, kh, kw], dilation and groups")
TIME_INVARIANT = Family("TIME_INVARIANT", "same map at every step, no state: f(repeat(x)) == repeat(f(x))")
PER_STEP_PARAMS = Family("PER_STEP_PARAMS", "one parameter per step: a static input gives a per-step output")
ROUTING = Family("ROUTING", "moves values without arithmetic")

FAMILIES: dict[str, Family] = {
    f.name: f for f in (NEURON, SYNAPTIC, CONV, CONV2D, TIME_INVARIANT, PER_STEP_PARAMS, ROUTING)
}
