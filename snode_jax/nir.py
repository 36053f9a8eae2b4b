"""Interchange with the Neuromorphic Intermediate Representation (NIR).

[`to_nir`][] writes a [`SpikingODELayer`][], [`LeakyReadout`][] or
[`SpikingODENetwork`][] as a `nir.NIRGraph`; [`from_nir`][] reads such a graph (or a
`.nir` file) back into these modules. Needs the `nir` package: `pip install
"snode_jax[nir]"`.

**The graphs.** A chain `Input -> Linear -> population -> Linear -> population ...
-> Output`, where a population is one of the nodes below. A recurrent layer is a
loop from its population through a `Linear` (and, for a delay, a `Delay` whose
entries are all equal) back into itself. On import, an `Affine` is accepted in
place of a `Linear` when its bias is zero, a population fed straight from the
previous one (no weight node) gets the identity weight, and nested graphs (as
some libraries write recurrent layers) are inlined. Anything else (convolutions,
pooling, `Flatten`, `Threshold`, `Scale`, a `Delay` outside a recurrent loop, a
non-zero bias, branches or skip connections) raises a `ValueError` naming the
node, its type and what is supported.

**Time.** NIR is continuous-time and has no `dt`: every parameter maps exactly.
Times here are in ms; `time_scale` is the number of ms in one unit of NIR time,
by default 1000 (NIR time constants and delays in seconds, as the libraries that
write NIR use). A spike is a Dirac delta of unit area in NIR time, so a `Linear`
weight `W` carried by a spike is a charge: it moves the node's state by a finite
jump, which is what this library's weight is.

**The equations** (NIR on the left, time `t` in NIR units; this library on the
right, time in ms; `s = time_scale`, `S` the input spikes, `I = W S` the node's
input current):

| NIR node | NIR equations | snode_jax | parameters |
|---|---|---|---|
| `LIF(tau, r, v_leak, v_threshold, v_reset)` | `tau dv/dt = (v_leak - v) + r I` | `ODELIFDynamics`: `dv/dt = -(v - v_rest)/tau_mem + I/C_mem`; a spike adds `w` to `v` | `tau_mem = s tau`, `v_rest = v_leak`, `C_mem = s tau / r`, `w = (r / tau) W` |
| `CubaLIF(tau_syn, tau_mem, r, v_leak, v_threshold, v_reset, w_in)` | `tau_syn dI_s/dt = -I_s + w_in I`, `tau_mem dv/dt = (v_leak - v) + r I_s` | `CubaLIFDynamics`: a spike adds `w` to `i_syn`; `dv/dt = -(v - v_rest)/tau_mem + i_syn/C_mem` | `tau_mem`, `tau_syn` times `s`, `C_mem = s tau_mem / r`, `w = (w_in / tau_syn) W` (so `i_syn` is NIR's `I_s`) |
| `IF(r, v_threshold, v_reset)` | `dv/dt = r I` | [`IFDynamics`][]: `dv/dt = I/C_mem`; a spike adds `w` to `v` | `C_mem = s / r`, `w = r W` |
| `LI(tau, r, v_leak)`, `CubaLI(...)`, `I(r)` | as `LIF`, `CubaLIF`, `IF` without firing | [`LeakyReadout`][] with the model above | as above |
| `Delay(delay)` in a recurrent loop | `y(t) = x(t - delay)` | `SpikingODELayer(..., delay=)` | `delay = s delay` |

All of them spike when `v` reaches `v_threshold` and then set `v = v_reset` (NIR
writes `v > v_threshold`; in continuous time the two differ only when a jump lands
exactly on the threshold, which fires here). In
each row `W` is the `Linear` weight feeding the node (input or recurrent), row
`k` scaled by neuron `k`'s factor. The dense-input current of a layer (`weight @
x_k`, which NIR graphs do not carry) is NIR's current `I`: that is what fixes
`C_mem` from `r`. On export `w_in = 1` and `r` follows from `C_mem` by the same
rules, so a module survives the round trip up to the rounding of these products
(a few ulp), and the spike times with it.

**Parameters.** NIR stores one value per neuron. On export, scalars are broadcast
to `(n,)`; on import, a parameter whose entries are all equal becomes a scalar
(shared by the population, as the model's defaults are), others stay per neuron.
`r`, `tau`, `tau_mem`, `tau_syn` must be `> 0`. NIR does not specify the initial
state: imported neurons start at rest, `v = v_leak`, or at `v_reset` where
`v_leak >= v_threshold` (a neuron that fires with no input has no rest below
threshold) and for an `IF` (as the models' `init_state` does). A readout's
`v_threshold` is never used and is not exported (an imported readout gets the
model's default); nor is its `v_reset`, except that an `IF` readout starts there,
which NIR's `I` cannot carry: export refuses an `IF` readout whose `v_reset` is
not 0.
"""

from ._nir_export import to_nir
from ._nir_import import from_nir

__all__ = ["from_nir", "to_nir"]
