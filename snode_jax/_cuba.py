"""Current-based LIF: a synaptic current that relaxes to the input, driving the
membrane. Linear, with a closed-form flow (at every ratio of the time constants,
equal ones included), but no closed-form crossing time."""

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import NeuronFloat, RealScalarLike
from ._dynamics import AbstractExactFlowDynamics
from ._math import relax
from ._params import as_param, check_below, check_params

_Param = RealScalarLike | Float[ArrayLike, " n"]


class CubaLIFState(eqx.Module):
    """Membrane voltage `v` and synaptic current `i_syn`, one per neuron."""

    v: NeuronFloat
    i_syn: NeuronFloat


class CubaLIFDynamics(AbstractExactFlowDynamics):
    """Current-based LIF:

    ```
    tau_syn di_syn/dt = -i_syn + I
    dv/dt = -(v - v_rest) / tau_mem + i_syn / C_mem
    ```

    with the layer's input current `I = weight @ x` held constant over each interval.
    An input spike (a [`SpikeTrain`][] input) adds its weight to `i_syn`: an
    exponential synapse. A spike is an upward crossing of `v_threshold`;
    `v <- v_reset` (the synaptic current is unchanged). The flow is known in closed
    form, but `v` may rise above threshold and fall back within a step, and the
    crossing time has no closed form: the solver steps on the exact flow, checks the
    one interior maximum `v` can have in a step, and locates crossings with
    [`bisect_crossing`][].

    **Arguments:** `tau_mem`, `tau_syn` (ms, `> 0`; any ratio, `tau_mem == tau_syn`
    included), `v_rest`, `v_threshold`, `v_reset` (`< v_threshold`), `C_mem`
    (`> 0`): scalars or one per neuron.
    """

    tau_mem: Float[Array, "*n"]
    tau_syn: Float[Array, "*n"]
    v_rest: Float[Array, "*n"]
    v_threshold: Float[Array, "*n"]
    v_reset: Float[Array, "*n"]
    C_mem: Float[Array, "*n"]

    parameter_names: ClassVar[tuple[str, ...]] = (
        "tau_mem",
        "tau_syn",
        "v_rest",
        "v_threshold",
        "v_reset",
        "C_mem",
    )

    def __init__(
        self,
        tau_mem: _Param = 20.0,
        tau_syn: _Param = 5.0,
        v_rest: _Param = 0.0,
        v_threshold: _Param = 1.0,
        v_reset: _Param = 0.0,
        C_mem: _Param = 1.0,
    ):
        values = (tau_mem, tau_syn, v_rest, v_threshold, v_reset, C_mem)
        for name, value in zip(self.parameter_names, values):
            setattr(self, name, as_param(name, value))

    def __check_init__(self):
        positive = ("tau_mem", "tau_syn", "C_mem")
        units = {"tau_mem": "ms", "tau_syn": "ms"}
        if check_params(self, self.parameter_names, positive, units):
            check_below(self, "v_reset", "v_threshold")

    def init_state(self, n_neurons: int, dtype) -> CubaLIFState:
        # As for the LIF: a resting potential at or above threshold starts at reset.
        rest = jnp.where(self.v_rest < self.v_threshold, self.v_rest, self.v_reset)
        v = jnp.broadcast_to(rest, (n_neurons,)).astype(dtype)
        return CubaLIFState(v, jnp.zeros((n_neurons,), dtype))

    def vector_field(self, t, y: CubaLIFState, current) -> CubaLIFState:
        del t
        dv = -(y.v - self.v_rest) / self.tau_mem + y.i_syn / self.C_mem
        di = (current - y.i_syn) / self.tau_syn
        return CubaLIFState(dv, di)

    def threshold(self, y: CubaLIFState):
        return y.v - self.v_threshold

    def reset(self, y: CubaLIFState) -> CubaLIFState:
        v = jnp.broadcast_to(self.v_reset, y.v.shape).astype(y.v.dtype)
        return CubaLIFState(v, y.i_syn)

    def exact_flow(self, y: CubaLIFState, current, h) -> CubaLIFState:
        # v(t) = v_inf + (v0 - v_inf) e^{-t/tau_mem} + (i0 - I) / C_mem K(t): the
        # membrane filters the synaptic current's decay through the kernel K.
        tm, ts = self.tau_mem, self.tau_syn
        v_inf = self.v_rest + current * (tm / self.C_mem)
        drive = (y.i_syn - current) / self.C_mem
        # (See `relax`: precise for short steps and long ones.)
        v = relax(y.v, v_inf, h / tm) + drive * _kernel(h, tm, ts)
        i_syn = relax(y.i_syn, current, h / ts)
        return CubaLIFState(v, i_syn)

    def peak_in_step(self, y: CubaLIFState, current, h):
        """The time of the one interior maximum of `v` in `(0, h)`, and whether there
        is one. With `u0 = v0 - v_inf`, `d = (i0 - I) / C_mem` and `r = 1/tau_syn -
        1/tau_mem`, `v' = 0` at `t = -(log1p(u0 r / d) + log1p(-r tau_syn)) / r`
        (its series in `r` near `r = 0`); it is a maximum where `d > 0`."""
        tm, ts = self.tau_mem, self.tau_syn
        v_inf = self.v_rest + current * (tm / self.C_mem)
        u0 = y.v - v_inf
        d = (y.i_syn - current) / self.C_mem
        r = 1 / ts - 1 / tm
        # A peak needs `d > 0`. Where `d` is so small that the derivative of `u0 /
        # d`, `-u0 / d^2`, would overflow (`where` would pass it to the gradient as
        # `0 * inf`, NaN) or `d^2` underflows, there is none worth finding: `|u0 /
        # d|` is then over `sqrt(|u0| max)`, and with it there is a peak only where
        # `r < 0` and `u0 < 0`, no earlier than `log(|u0 r / d|) / |r|`, and at most
        # `d max(tau_mem, tau_syn)` above `v_inf` (1e-18 for |u0| = 1 and 20 ms in
        # float32): never a crossing.
        big = jnp.finfo(jnp.result_type(u0, d)).max
        ok = (d > 0) & (d * d > jnp.abs(u0) / big)
        ratio = u0 / jnp.where(ok, d, 1)
        # Near `r = 0` (`z = r m` with `m = max(|ratio|, tau_syn)` below
        # `_peak_cutoff`) the series in `r`, `t = sum_k (-1)^k (a^k + (-ts)^k)
        # r^(k-1) / k = ts - a + (a^2 + ts^2) r / 2 - (a^3 - ts^3) r^2 / 3 + ...`
        # with `a = ratio`, to k = 6, written in `z` and `a / m`, `ts / m` (at most
        # 1: no power overflows): at `r = 0` its terms in `r` (zero in value) carry
        # the derivative in `r` (without them the gradient at `tau_mem == tau_syn`
        # went to one of the two), and beside it the closed form's derivative
        # cancels (at a relative gap of 1e-15 in float64 it split the gradient 0.52 /
        # 0.48 where both are 1/2).
        m = jnp.maximum(jnp.abs(ratio), ts)
        flat = jnp.abs(r) * m < _peak_cutoff(jnp.result_type(r, ratio))
        safe_r = jnp.where(flat, 1, r)
        arg = ratio * safe_r
        ok = ok & (flat | (arg > -1))
        t_bent = -(jnp.log1p(jnp.where(ok, arg, 0)) + jnp.log1p(-safe_r * ts)) / safe_r
        # (Where the series is not taken it is fed zeros and `m = 1`: `where` would
        # pass a NaN of the form not taken to the gradient.)
        m = jnp.where(flat, m, 1)
        z = jnp.where(flat, r, 0) * m
        a, b = jnp.where(flat, ratio, 0) / m, jnp.where(flat, ts, 0) / m
        # With T_k = (a^k + (-b)^k) / k: t / m = -(T_1 - z (T_2 - z (... - z T_6))).
        terms = [(a**k + (-b) ** k) / k for k in range(1, 7)]
        series = terms[5]
        for k in (4, 3, 2, 1, 0):
            series = terms[k] - z * series
        t_flat = -m * series
        t_peak = jnp.where(flat, t_flat, t_bent)
        ok = ok & (t_peak > 0) & (t_peak < h)
        return jnp.where(ok, t_peak, h), ok

    def jump(self, y: CubaLIFState, amount) -> CubaLIFState:
        """An input spike adds `amount` to the synaptic current."""
        return CubaLIFState(y.v, y.i_syn + amount)

    def voltage(self, y: CubaLIFState):
        return y.v

    def constraints(self, y: CubaLIFState):
        return {
            "tau_mem > 0": jnp.all(self.tau_mem > 0),
            "tau_syn > 0": jnp.all(self.tau_syn > 0),
            "C_mem > 0": jnp.all(self.C_mem > 0),
            "v_reset < v_threshold": jnp.all(self.v_reset < self.v_threshold),
            "initial v < v_threshold": jnp.all(y.v < self.v_threshold),
        }


def _peak_cutoff(dtype) -> float:
    """Below this `|r| max(|ratio|, tau_syn)` the peak time's series (to the sixth
    power of the ratio, error about that power of it) replaces the closed form,
    whose derivative cancels to about eps over it: the two meet at eps^(1/6), 0.07
    in float32 and 2.5e-3 in float64 (a cutoff of 1e-4 and four terms left the
    float32 gradient 7e-4 off just above it)."""
    return float(jnp.finfo(dtype).eps ** (1 / 6))


def _kernel_cutoff(dtype) -> float:
    """Below this |x| = |t r| the kernel's series replaces its closed form. The
    closed form's derivatives in the time constants cancel to about eps / |x|
    relative; the series' (to x^5) are off by about |x|^5 / 840: the two meet at
    (840 eps)^(1/6), 0.21 in float32 and 7.6e-3 in float64 (error ~5 eps and ~130
    eps there; a cutoff of 1e-4 left float32 derivatives 3e-3 off just above it)."""
    return float((840 * jnp.finfo(dtype).eps) ** (1 / 6))


def _kernel(t, tau_mem, tau_syn):
    """`K(t) = (e^{-t/tau_syn} - e^{-t/tau_mem}) / (1/tau_mem - 1/tau_syn)`, the
    membrane's response to a unit synaptic current decaying from `t = 0`; `t
    e^{-t/tau}` when the time constants are equal. Written so that it neither
    cancels near equal time constants nor overflows for long `t`, and differentiable
    in both time constants everywhere (also at equality)."""
    r = 1 / tau_syn - 1 / tau_mem
    x = t * r
    small = jnp.abs(x) < _kernel_cutoff(jnp.result_type(x))
    xs = jnp.where(small, x, 0)
    # (1 - e^{-x}) / x to x^5 (error below x^6 / 5040).
    poly = 1 + xs * (-1 / 2 + xs * (1 / 6 + xs * (-1 / 24 + xs * (1 / 120 - xs / 720))))
    series = jnp.exp(-t / tau_mem) * t * poly
    safe_x = jnp.where(small, 1, jnp.abs(x))
    safe_r = jnp.where(small, 1, jnp.abs(r))
    # Factor out the slower exponential: (1 - e^{-|x|}) / |r| stays in [0, t]. One
    # form for both signs of r, and the series fed 0 where it is not taken: a form
    # computed but not taken that overflowed (e^{|x|} from |x| ~ 88 in float32)
    # made the gradient through `where` NaN.
    slow = jnp.where(r > 0, tau_mem, tau_syn)
    far = jnp.exp(-t / slow) * (-jnp.expm1(-safe_x)) / safe_r
    return jnp.where(small, series, far)
