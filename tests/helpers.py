"""Helpers shared by the tests: tree comparison, random LIF configurations, and
comparison of the library against the closed-form reference in `lif_reference.py`."""

import dataclasses
import decimal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import snode_jax as sj

from .lif_reference import LIFReference, lif_reference

LIF_PARAMS = ("tau_mem", "v_rest", "v_threshold", "v_reset", "C_mem")
EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).tiny)


def decimal_partials(f, *args, digits: int = 60, h: str = "1e-25") -> list[float]:
    """The partial derivatives of `f` (written with `decimal.Decimal` arithmetic:
    `exp`, `ln`, the four operations) in each argument at `args`, by centred
    differences of step `h` in `digits`-digit arithmetic. An independent reference
    for a closed form whose own derivatives cancel in floating point: `f` itself
    to about `digits - 25` digits where it cancels 25, and the difference's
    truncation below `h^2`."""
    with decimal.localcontext(decimal.Context(prec=digits)):
        x = [decimal.Decimal(a) for a in args]
        step = decimal.Decimal(h)
        out = []
        for i in range(len(x)):
            up, down = list(x), list(x)
            up[i] += step
            down[i] -= step
            out.append(float((f(*up) - f(*down)) / (2 * step)))
        return out


# -- generic comparisons -----------------------------------------------------------


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8, equal_nan=False) -> bool:
    """Same structure, shapes and dtypes, and every leaf allclose."""
    x_leaves, x_def = jax.tree.flatten(x)
    y_leaves, y_def = jax.tree.flatten(y)
    if x_def != y_def:
        return False
    for a, b in zip(x_leaves, y_leaves):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
            if not np.array_equal(a, b):
                return False
        elif not np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan):
            return False
    return True


def assert_padded_times_close(actual, expected, atol, *, neurons=None):
    """Compare `(n, max_spikes)` `+inf`-padded spike-time arrays: the padding must
    coincide exactly and the finite times agree to `atol` (scalar or same shape)."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if neurons is not None:
        actual, expected = actual[neurons], expected[neurons]
        if np.ndim(atol):
            atol = np.asarray(atol)[neurons]
    fin_a, fin_e = np.isfinite(actual), np.isfinite(expected)
    assert np.array_equal(fin_a, fin_e), "spike-time padding differs"
    assert np.all(actual[~fin_a] == np.inf), "padding must be +inf"
    err = np.abs(np.where(fin_e, actual, 0.0) - np.where(fin_e, expected, 0.0))
    atol = np.broadcast_to(atol, err.shape)
    bad = err > atol
    assert not bad.any(), (
        f"{bad.sum()} spike times off; worst error {err.max():.3e} ms, at "
        f"{np.unravel_index(np.argmax(err - atol), err.shape)}"
    )
    # Ascending within each neuron (the padding is at the end, as checked above).
    both = fin_a[:, 1:] & fin_a[:, :-1]
    gaps = np.diff(np.where(fin_a, actual, 0.0), axis=1)
    assert np.all(gaps[both] >= 0), "spike times not ascending"
    assert np.all(fin_a[:, 1:] <= fin_a[:, :-1]), "padding must be at the end"


# -- LIF configurations ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity
class LIFConfig:
    """A layer configuration plus its weight and inputs, all generated from `seed`
    with NumPy (so the reference needs no JAX)."""

    name: str
    n_inputs: int
    n_neurons: int
    n_intervals: int
    interval: float
    params: dict  # name -> float or float64 array of shape (n_neurons,)
    input_scale: float
    input_low: float  # inputs are uniform in [input_low, 1) * input_scale
    seed: int

    def params_as(self, dtype=np.float64, *, per_neuron=False) -> dict:
        """The parameters rounded to `dtype` (as float64 NumPy values), optionally
        broadcast to one per neuron."""
        out = {}
        for k, v in self.params.items():
            v = np.asarray(np.asarray(v, dtype), np.float64)
            out[k] = np.broadcast_to(v, (self.n_neurons,)).copy() if per_neuron else v
        return out

    def dynamics(self, dtype=jnp.float64, *, per_neuron=False) -> sj.ODELIFDynamics:
        params = self.params_as(dtype, per_neuron=per_neuron)
        return sj.ODELIFDynamics(
            **{k: jnp.asarray(v, dtype) for k, v in params.items()}
        )

    def weight(self, dtype=np.float64) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        std = np.sqrt(2.0 / self.n_inputs)
        w = std * rng.standard_normal((self.n_neurons, self.n_inputs))
        return w.astype(dtype)

    def inputs(self, dtype=np.float64) -> np.ndarray:
        rng = np.random.default_rng(self.seed + 1)
        u = rng.uniform(self.input_low, 1.0, (self.n_intervals, self.n_inputs))
        return (u * self.input_scale).astype(dtype)

    def layer(self, dtype=jnp.float64, *, per_neuron=False, **kwargs):
        """The layer, with this config's weight in `dtype` (set explicitly, which
        also sidesteps the layer's own weight dtype: see
        `test_lif_exact.py::test_weight_dtype_follows_dtype_argument`)."""
        layer = sj.SpikingODELayer(
            self.n_inputs,
            self.n_neurons,
            self.dynamics(dtype, per_neuron=per_neuron),
            dtype=dtype,
            key=jax.random.key(0),
            **kwargs,
        )
        weight = jnp.asarray(self.weight(np.dtype(dtype)))
        return eqx.tree_at(lambda lyr: lyr.weight, layer, weight)

    def reference(self, dtype=np.float64, v0=None) -> LIFReference:
        """The float64 reference for this config rounded to `dtype`."""
        dtype = np.dtype(dtype)
        return lif_reference(
            self.weight(dtype).astype(np.float64),
            self.inputs(dtype).astype(np.float64),
            float(np.float64(dtype.type(self.interval))),
            v0=v0,
            **self.params_as(dtype),
        )


def random_lif_config(
    rng: np.random.Generator,
    name: str,
    *,
    n_inputs: int,
    n_neurons: int,
    n_intervals: int,
    drive: float,
    per_neuron: bool | tuple[str, ...] = False,
    interval: float | None = None,
    input_low: float = 0.0,
) -> LIFConfig:
    """A random LIF configuration.

    `drive` sets the input scale so that the typical asymptotic voltage
    `v_inf - v_rest` is about `drive * (v_threshold - v_rest)`: below 1 mostly
    subthreshold, 1000 fires every few microseconds. `per_neuron` makes all (True)
    or the named parameters one-per-neuron arrays.
    """
    if per_neuron is True:
        per_neuron = LIF_PARAMS
    elif per_neuron is False:
        per_neuron = ()
    size = (n_neurons,)

    def draw(param, low, high):
        return (
            rng.uniform(low, high, size)
            if param in per_neuron
            else float(rng.uniform(low, high))
        )

    tau = draw("tau_mem", 4.0, 50.0)
    v_rest = draw("v_rest", -1.0, 0.5)
    v_threshold = v_rest + draw("v_threshold", 0.2, 2.0)
    # v_reset anywhere from below rest to just under threshold.
    v_reset = v_threshold - draw("v_reset", 0.05, 2.5)
    C_mem = draw("C_mem", 0.5, 2.0)
    if interval is None:
        interval = float(rng.choice([0.1, 0.5, 1.0, 2.5, 10.0]))
    gap = np.mean(np.asarray(v_threshold) - np.asarray(v_rest))
    # The current of one neuron has standard deviation ~ 0.6 * input_scale for
    # weights N(0, 2 / n_inputs) and inputs uniform in [0, 1) * input_scale.
    scale = drive * gap * np.mean(np.asarray(C_mem) / np.asarray(tau)) / 0.6
    params = dict(
        tau_mem=tau,
        v_rest=v_rest,
        v_threshold=v_threshold,
        v_reset=v_reset,
        C_mem=C_mem,
    )
    return LIFConfig(
        name=name,
        n_inputs=n_inputs,
        n_neurons=n_neurons,
        n_intervals=n_intervals,
        interval=interval,
        params=params,
        input_scale=float(scale),
        input_low=input_low,
        seed=int(rng.integers(2**31)),
    )


def layer_params(layer) -> dict:
    """The layer's dynamics parameters as float64 NumPy arrays."""
    return {k: np.asarray(getattr(layer.dynamics, k), np.float64) for k in LIF_PARAMS}


def reference_for(layer, inputs, interval, v0=None) -> LIFReference:
    """The float64 reference for exactly the values the layer holds (so a float32
    layer is compared with the exact solution of its float32-rounded problem)."""
    return lif_reference(
        np.asarray(layer.weight, np.float64),
        np.asarray(inputs, np.float64),
        float(np.float64(interval)),
        v0=None if v0 is None else np.asarray(v0, np.float64),
        **layer_params(layer),
    )


# -- float32 error model -------------------------------------------------------------


@dataclasses.dataclass
class Float32Bounds:
    """Per-neuron rounding-error bounds for a float32 run of the closed-form solver.

    `time_tol[i]`: one tolerance (ms) per reference spike of neuron `i`;
    `v_tol`: `(T, n)` tolerance on the voltage at each interval end;
    `margin[i]`: the smallest distance (ms) between an interval end and a crossing
    that rounding could move across it (the last spike of an interval, or the
    crossing that would come next if the interval's input continued);
    `safe[i]`: that margin is at least 1e-3 ms and twice the time tolerance there,
    so the float32 counts of neuron `i` must be exact.
    """

    time_tol: list
    v_tol: np.ndarray
    margin: np.ndarray
    safe: np.ndarray


def float32_bounds(layer, inputs, interval, ref: LIFReference) -> Float32Bounds:
    """First-order rounding-error propagation for the float32 closed-form walk.

    Per interval of constant current the library computes `v_inf = v_rest + I tau/C`
    (`I = w . x`, a float32 dot product of `n_in` terms), `u = v_inf - v_threshold`,
    `s = (v_inf - v) e^{-T/tau}` and `gain = (v_inf - v_reset) / u`; a crossing is
    pending while `s <= u`, its time is `T + tau log(s / u)`, each spike multiplies
    `s` by `gain`, and the end voltage is `v_inf - s`. With `eps` the float32
    epsilon and `M` the magnitude of the terms of `v_inf`
    (`|v_rest| + sum_j |w_j x_j| tau / C`):

    - `|d v_inf| <= (n_in + 3) eps M` (the dot product, then three operations);
    - the relative error `r` of `s` starts at `(|dv| + |d v_inf|) / (v_inf - v)`
      (`dv`: the error carried in from the previous interval) plus `(2 + T/tau) eps`
      for the decay factor, is unchanged by the free flow, and grows by
      `|d v_inf| / u + 2 eps` at every spike (the error of `gain`);
    - a spike is then off in time by `tau (r + |d v_inf| / u + eps)`, i.e. the
      voltage error `r u` divided by the slope `u / tau` at threshold (small slope,
      large shift), plus `2 eps (t + T)` for forming the absolute time;
    - the end voltage is off by `|d v_inf| + r s_end + eps |v_end|` (plus the
      smallest normal number: subnormals may be flushed to zero).

    These are worst-case first-order sums (all signs aligned); observed errors are
    an order of magnitude below them.
    """
    eps = EPS32
    p = layer_params(layer)
    w = np.asarray(layer.weight, np.float64)
    x = np.asarray(inputs, np.float64)
    n_intervals, n_in = x.shape
    n = w.shape[0]
    T = float(interval)
    tau, v_rest, v_th, v_reset, C = (np.broadcast_to(p[k], (n,)) for k in LIF_PARAMS)
    v_inf = v_rest + (x @ w.T) * tau / C  # (T, n)
    magnitude = np.abs(v_rest) + (np.abs(x) @ np.abs(w).T) * tau / C
    dv_inf = (n_in + 3) * eps * magnitude

    time_tol = [[] for _ in range(n)]
    v_tol = np.zeros((n_intervals, n))
    margin = np.full(n, np.inf)
    safe = np.ones(n, bool)
    for i in range(n):
        ts = np.asarray(ref.spike_times[i])
        k_of = np.clip(np.ceil(ts / T).astype(int) - 1, 0, n_intervals - 1)
        dv = 0.0  # error of the voltage carried into the interval (from rest)
        v0 = v_rest[i]
        for k in range(n_intervals):
            vi, u = v_inf[k, i], v_inf[k, i] - v_th[i]
            d_inf = dv_inf[k, i]
            r = (dv + d_inf) / abs(vi - v0) + (2 + T / tau[i]) * eps
            t_k = ts[k_of == k]
            end = (k + 1) * T
            events = []  # (distance to the interval end, time tolerance)
            if len(t_k):
                j = np.arange(len(t_k))
                r_j = r + j * (d_inf / u + 2 * eps)
                tol = tau[i] * (r_j + d_inf / u + eps) + 2 * eps * (t_k + T)
                time_tol[i].extend(tol)
                events.append((end - t_k[-1], tol[-1]))
                r = r + len(t_k) * (d_inf / u + 2 * eps)
            v_end = ref.interval_v[k, i]
            if u > 0:  # the crossing that would come next
                gap = tau[i] * np.log((vi - v_end) / u)
                tol = tau[i] * (r + d_inf / u + eps) + 2 * eps * (end + T)
                events.append((gap, tol))
            for gap, tol in events:
                margin[i] = min(margin[i], gap)
                safe[i] &= gap >= max(1e-3, 2 * tol)
            # (+ the smallest normal float32: XLA flushes subnormals to zero)
            dv = d_inf + r * abs(vi - v_end) + eps * abs(v_end) + TINY32
            v_tol[k, i] = dv
            v0 = v_end
        time_tol[i] = np.asarray(time_tol[i])
    return Float32Bounds(time_tol, v_tol, margin, safe)


def cap_spikes(cfg: LIFConfig, cap: int, dtype=np.float64) -> LIFConfig:
    """Halve the input scale until no neuron of `cfg` fires more than `cap` spikes
    in total (so that a fixed spike buffer holds them all)."""
    while cfg.reference(dtype).counts.sum(axis=0).max() > cap:
        cfg = dataclasses.replace(cfg, input_scale=cfg.input_scale / 2)
    return cfg
