"""``DelayLine``: a Lava process that holds its input for ``delay`` steps (``out[t] = in[t - delay]``).

Used to align paths of unequal depth in a LoihiNet: a projection with ``delay = D`` is
``src.s_out -> DelayLine(D) -> synapse -> dst.a_in``.  Graded payloads (int32) pass unchanged, spikes as 0/1.
The ring starts at zero.  Absolute imports only: Lava's compiler also executes this file as a top-level module.
"""

import numpy as np

from sdmc.backends.lava import compat

compat.install_import_fixes()

from lava.magma.core.decorator import implements, requires, tag  # noqa: E402
from lava.magma.core.model.py.model import PyLoihiProcessModel  # noqa: E402
from lava.magma.core.model.py.ports import PyInPort, PyOutPort  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.process.variable import Var  # noqa: E402
from lava.magma.core.resources import CPU  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402


class DelayLine(AbstractProcess):
    """``a_out[t] = s_in[t - delay]`` (zeros for ``t <= delay``), ``delay >= 1``, any ``shape``."""

    def __init__(self, *, shape: tuple, delay: int, name: str | None = None) -> None:
        if int(delay) < 1:
            raise ValueError(f"DelayLine: delay must be >= 1, got {delay}")
        super().__init__(shape=shape, delay=int(delay), name=name)
        self.s_in = InPort(shape=shape)
        self.a_out = OutPort(shape=shape)
        self.ring = Var(shape=(int(delay),) + tuple(shape), init=0)


@implements(proc=DelayLine, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "floating_pt")
class PyDelayLineModel(PyLoihiProcessModel):
    """Send the oldest entry first (no dependency on this step's input, so no deadlock), then shift in the
    received value."""

    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    a_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    ring: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def run_spk(self) -> None:
        self.a_out.send(self.ring[0].copy())
        x = self.s_in.recv()
        self.ring[:-1] = self.ring[1:]
        self.ring[-1] = x
