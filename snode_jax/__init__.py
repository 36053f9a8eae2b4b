"""Spiking neural ODEs in JAX: exact spike times with adaptive event-driven solvers."""

from ._adex import AdExDynamics as AdExDynamics, AdExState as AdExState
from ._adjoint import (
    AbstractAdjoint as AbstractAdjoint,
    ClosedFormAdjoint as ClosedFormAdjoint,
)
from ._controller import (
    PredictiveController as PredictiveController,
    PredictiveState as PredictiveState,
)
from ._cuba import CubaLIFDynamics as CubaLIFDynamics, CubaLIFState as CubaLIFState
from ._dynamics import (
    AbstractClosedFormDynamics as AbstractClosedFormDynamics,
    AbstractDynamics as AbstractDynamics,
    AbstractExactFlowDynamics as AbstractExactFlowDynamics,
    IntervalReplay as IntervalReplay,
)
from ._if import IFDynamics as IFDynamics, IFState as IFState
from ._integrate import (
    integrate as integrate,
    integrate_events as integrate_events,
)
from ._izhikevich import (
    IZHIKEVICH_PATTERNS as IZHIKEVICH_PATTERNS,
    IzhikevichDynamics as IzhikevichDynamics,
    IzhikevichState as IzhikevichState,
)
from ._layer import SpikingODELayer as SpikingODELayer
from ._lif import (
    LIFState as LIFState,
    ODELIFDynamics as ODELIFDynamics,
    lif_vector_field as lif_vector_field,
)
from ._loop_kernels import single_kernel_loops as single_kernel_loops
from ._memory import keep_freed_memory as keep_freed_memory
from ._network import (
    LeakyReadout as LeakyReadout,
    NetworkSolution as NetworkSolution,
    ReadoutSolution as ReadoutSolution,
    SpikingODENetwork as SpikingODENetwork,
    first_spike_times as first_spike_times,
)
from ._online import OnlineLayer as OnlineLayer
from ._qif import QIFDynamics as QIFDynamics, QIFState as QIFState
from ._rerun_adjoint import RerunAdjoint as RerunAdjoint
from ._root_find import (
    BracketedNewton as BracketedNewton,
    bisect_crossing as bisect_crossing,
)
from ._runge_kutta import (
    AbstractRungeKutta as AbstractRungeKutta,
    Bosh3 as Bosh3,
    Dopri5 as Dopri5,
    Tsit5 as Tsit5,
)
from ._solution import RESULTS as RESULTS, Solution as Solution
from ._solver import (
    Exact as Exact,
    ExactFlow as ExactFlow,
    StepProposal as StepProposal,
    adaptive_step as adaptive_step,
)
from ._spike_train import SpikeTrain as SpikeTrain
from ._surrogate import (
    AbstractSurrogate as AbstractSurrogate,
    ArctanSurrogate as ArctanSurrogate,
    FastSigmoidSurrogate as FastSigmoidSurrogate,
    SigmoidSurrogate as SigmoidSurrogate,
)

__version__ = "0.1.0"
