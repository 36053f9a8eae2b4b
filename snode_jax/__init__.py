"""Spiking neural ODEs in JAX: exact spike times with adaptive event-driven solvers."""

from ._adex import AdExDynamics as AdExDynamics, AdExState as AdExState
from ._cuba import CubaLIFDynamics as CubaLIFDynamics, CubaLIFState as CubaLIFState
from ._dynamics import (
    AbstractClosedFormDynamics as AbstractClosedFormDynamics,
    AbstractDynamics as AbstractDynamics,
    IntervalReplay as IntervalReplay,
)
from ._integrate import integrate as integrate
from ._izhikevich import (
    IZHIKEVICH_PATTERNS as IZHIKEVICH_PATTERNS,
    IzhikevichDynamics as IzhikevichDynamics,
    IzhikevichState as IzhikevichState,
)
from ._layer import OnlineLayer as OnlineLayer, SpikingODELayer as SpikingODELayer
from ._lif import (
    LIFState as LIFState,
    ODELIFDynamics as ODELIFDynamics,
    lif_vector_field as lif_vector_field,
)
from ._qif import QIFDynamics as QIFDynamics, QIFState as QIFState
from ._root_find import bisect_crossing as bisect_crossing
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solver import (
    AbstractRungeKutta as AbstractRungeKutta,
    AbstractSolver as AbstractSolver,
    Bosh3 as Bosh3,
    Dopri5 as Dopri5,
    Exact as Exact,
    StepProposal as StepProposal,
    Tsit5 as Tsit5,
    adaptive_step as adaptive_step,
)
from ._surrogate import (
    AbstractSurrogate as AbstractSurrogate,
    ArctanSurrogate as ArctanSurrogate,
    FastSigmoidSurrogate as FastSigmoidSurrogate,
    SigmoidSurrogate as SigmoidSurrogate,
)

__version__ = "0.1.0"
