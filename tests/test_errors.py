"""Every error: eager argument checks (message names the argument and the value),
and failures detected at run time (raised by default, reported in `result` with
`throw=False`)."""

import decimal
import fractions
import re
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import snode_jax as sj

from .helpers import assert_padded_times_close, reference_for

N_IN, N, T = 3, 4, 3
_KEY = jax.random.key(0)


def _layer(dynamics=None, **kwargs):
    return sj.SpikingODELayer(N_IN, N, dynamics, key=_KEY, **kwargs)


def _strong_inputs():
    # v_inf well above threshold for most neurons: many spikes per interval.
    return np.abs(np.random.default_rng(0).normal(size=(T, N_IN))) * 20.0 + 5.0


# -- construction ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["n_inputs", "n_neurons"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes(name, value):
    sizes = dict(n_inputs=N_IN, n_neurons=N)
    sizes[name] = value
    with pytest.raises(
        ValueError, match=rf"`{name}` must be a positive int, got {value}"
    ):
        sj.SpikingODELayer(**sizes, key=_KEY)


@pytest.mark.parametrize(
    "make, name",
    [
        (sj.SpikingODELayer, "n_inputs"),
        (sj.SpikingODELayer, "n_neurons"),
        (sj.LeakyReadout, "n_inputs"),
        (sj.LeakyReadout, "n_outputs"),
    ],
)
def test_sizes_beyond_int32(make, name):
    # Neurons and input sources are indexed in int32: a larger size is refused
    # before a weight is drawn (a 3 x 2**40 weight was dispatched).
    sizes = {
        "n_inputs": N_IN,
        ("n_neurons" if make is sj.SpikingODELayer else "n_outputs"): N,
    }
    sizes[name] = 2**31
    with pytest.raises(
        ValueError, match=rf"`{name}` must be at most 2147483647 \(neurons and"
    ):
        make(**sizes, key=_KEY)


@pytest.mark.parametrize("name", ["n_inputs", "n_neurons"])
@pytest.mark.parametrize("value", [2.0, True, "3"])
def test_non_int_sizes(name, value):
    sizes = dict(n_inputs=N_IN, n_neurons=N)
    sizes[name] = value
    expected = f"`{name}` must be a positive int, got {value!r}."
    with pytest.raises(TypeError, match=re.escape(expected)):
        sj.SpikingODELayer(**sizes, key=_KEY)


@pytest.mark.parametrize("name", ["tau_mem", "C_mem"])
@pytest.mark.parametrize("value", [0.0, -2.5])
def test_non_positive_time_constant_or_capacitance(name, value):
    with pytest.raises(ValueError, match=rf"`{name}` must be > 0.*got {value}"):
        sj.ODELIFDynamics(**{name: value})


def test_non_positive_parameter_in_per_neuron_array():
    with pytest.raises(
        ValueError, match=r"`tau_mem` must be > 0 \(ms\), got \[20.0, -1.0"
    ):
        sj.ODELIFDynamics(tau_mem=np.array([20.0, -1.0, 5.0]))


@pytest.mark.parametrize(
    "v_reset, v_threshold", [(1.0, 1.0), (2.0, 1.0), ([0.0, 1.5], [1.0, 1.0])]
)
def test_reset_not_below_threshold(v_reset, v_threshold):
    with pytest.raises(ValueError) as info:
        sj.ODELIFDynamics(
            v_reset=np.asarray(v_reset), v_threshold=np.asarray(v_threshold)
        )
    msg = str(info.value)
    assert "`v_reset` must be < `v_threshold`" in msg
    assert f"v_reset={np.asarray(v_reset).tolist()!r}" in msg
    assert f"v_threshold={np.asarray(v_threshold).tolist()!r}" in msg


@pytest.mark.parametrize(
    "name", ["tau_mem", "v_rest", "v_threshold", "v_reset", "C_mem"]
)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_parameter_eager(name, bad):
    with pytest.raises(ValueError, match=rf"`{name}` must be finite, got {bad}"):
        sj.ODELIFDynamics(**{name: bad})


def test_wrong_per_neuron_parameter_shape():
    dyn = sj.ODELIFDynamics(tau_mem=jnp.full((N - 1,), 20.0))
    with pytest.raises(
        ValueError,
        match=rf"`tau_mem` must be a scalar or have shape \({N},\).*got shape \({N - 1},\)",
    ):
        _layer(dyn)
    with pytest.raises(
        ValueError, match=r"`v_rest` must be a scalar or a 1-D array.*\(2, 2\)"
    ):
        sj.ODELIFDynamics(v_rest=np.zeros((2, 2)))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(dt_min=0.0), r"`dt_min` must be a positive number \(ms\), got 0.0"),
        (dict(dt_min=-1e-3), r"`dt_min` must be a positive number \(ms\), got -0.001"),
        (dict(dt_init=0.0), r"`dt_init` must be a positive number \(ms\), got 0.0"),
        (dict(dt_init=np.nan), r"`dt_init` must be a positive number \(ms\), got nan"),
        (
            dict(dt_init=0.01, dt_min=0.1),
            r"`dt_min` must be <= `dt_init`, got dt_min=0.1 and dt_init=0.01",
        ),
        (
            dict(dt_max=0.05),
            r"`dt_max` must be >= `dt_init`, got dt_max=0.05 and dt_init=0.1",
        ),
        (dict(dt_max=-1.0), r"`dt_max` must be a positive number \(ms\), got -1.0"),
        (dict(rtol=0.0), r"`rtol` must be a positive number, got 0.0"),
        (dict(atol=-1.0), r"`atol` must be a positive number, got -1.0"),
        (dict(max_steps=0), r"`max_steps` must be a positive int, got 0"),
        (dict(max_root_iters=-1), r"`max_root_iters` must be a positive int, got -1"),
        # Loop budgets are int32 loop bounds.
        (dict(max_steps=2**31), r"`max_steps` must be at most 2147483647 \(a loop"),
        (dict(max_root_iters=2**31), r"`max_root_iters` must be at most 2147483647"),
        (dict(dtype=jnp.int32), r"`dtype` must be a floating dtype, got "),
    ],
)
def test_bad_layer_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        _layer(**kwargs)


def test_bad_setting_types():
    with pytest.raises(
        TypeError, match=r"`dt_min` must be a positive number \(ms\), got 'a'"
    ):
        _layer(dt_min="a")
    with pytest.raises(
        TypeError, match=r"`max_steps` must be a positive int, got 10.0"
    ):
        _layer(max_steps=10.0)
    with pytest.raises(TypeError, match=r"`solver` must be sj.Exact\(\), .*got str"):
        _layer(solver="dopri5")
    with pytest.raises(
        TypeError, match=r"`dynamics` must be an AbstractDynamics.*got dict"
    ):
        _layer(dynamics={"tau_mem": 20.0})


@pytest.mark.parametrize("name", ["dt_init", "dt_min", "dt_max", "rtol", "atol"])
@pytest.mark.parametrize("value", ["0.05", True, np.complex128(0.05 + 1j), None])
def test_step_settings_that_are_not_numbers(name, value):
    # A string, a bool or a complex number was read as a number ("0.05" as 0.05
    # ms, `rtol=True` as 1: an Izhikevich layer then ran with other spike counts
    # and reported success). (None is the default of each, so only the step
    # controller's own fields are tried with it below.)
    if value is None:
        return
    with pytest.raises(TypeError, match=rf"`{name}` must be a positive number"):
        _layer(sj.IzhikevichDynamics(), **{name: value})


def test_controller_and_root_finder_settings():
    good = dict(rtol=1e-6, atol=1e-8)
    for name, value in (
        ("rtol", "1e-3"),
        ("dt0", "0.1"),
        ("dtmin", True),
        ("dtmax", "inf"),
        ("factormax", None),
        ("safety", 1 + 0j),
    ):
        with pytest.raises(TypeError, match=rf"`{name}` must be a"):
            sj.PredictiveController(**{**good, name: value})
    with pytest.raises(TypeError, match="`predictive` must be a bool, got 'yes'"):
        sj.PredictiveController(**good, predictive="yes")
    with pytest.raises(TypeError, match="`norm` must be a function"):
        sj.PredictiveController(**good, norm=3)
    assert sj.PredictiveController(**good, dtmax=np.inf, factormax=5).dtmax == np.inf
    # The root finder's tolerances: finite (an infinite one accepted the step's end
    # as the crossing, 0.14 ms off, and reported success), real numbers.
    for kwargs, error, match in (
        (
            dict(atol=np.inf),
            ValueError,
            r"`atol` must be finite and > 0 \(ms\) or None, got inf",
        ),
        (dict(rtol=np.inf), ValueError, "`rtol` must be finite and >= 0, got inf"),
        (dict(rtol=True), TypeError, "`rtol` must be a number >= 0, got True"),
        (dict(rtol="0"), TypeError, "`rtol` must be a number >= 0, got '0'"),
        (
            dict(atol=[1e-9, 1e-9]),
            TypeError,
            "`atol` must be a positive number",
        ),
    ):
        with pytest.raises(error, match=match):
            sj.BracketedNewton(**kwargs)
    assert sj.BracketedNewton(rtol=0, atol=1e-12).atol == 1e-12
    assert sj.BracketedNewton(rtol=fractions.Fraction(1, 20)).rtol == 0.05
    with pytest.raises(ValueError, match="`rtol` must be finite"):
        sj.BracketedNewton(rtol=10**400)
    # An infinite tolerance is refused as not finite (the message said "a
    # positive number"); a value that is 0 or inf only as a float is shown as given.
    with pytest.raises(ValueError, match="`rtol` must be finite and > 0, got inf"):
        sj.PredictiveController(rtol=np.inf, atol=1e-8)
    with pytest.raises(ValueError, match=r"got Decimal\('1E-400'\)"):
        sj.PredictiveController(rtol=decimal.Decimal("1e-400"), atol=1e-8)
    # NumPy ints and bools in the other static fields are Python ones (equinox
    # warned of an array set as static).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert type(sj.BracketedNewton(max_steps=np.int64(5)).max_steps) is int
        made = sj.PredictiveController(**good, predictive=np.True_)
        assert type(made.predictive) is bool
    # A layer's `dt_max` may be infinite (its default), as the controller's.
    default = _layer(sj.IzhikevichDynamics())
    assert (
        _layer(
            sj.IzhikevichDynamics(), dt_max=default.stepsize_controller.dtmax
        ).stepsize_controller
        == default.stepsize_controller
    )
    # An upper bound beyond the range of a float is infinite (a decimal or an int
    # kept as given failed at run time, mixed with arrays).
    for huge in (decimal.Decimal("1e400"), 10**400):
        assert sj.PredictiveController(**good, dtmax=huge).dtmax == np.inf
    # The controller's bounds that may be infinite are still numbers > 0.
    for name, value, error in (
        ("dtmax", 0.0, ValueError),
        ("dtmax", np.nan, ValueError),
        ("factormax", -1.0, ValueError),
        ("factormax", "10", TypeError),
    ):
        with pytest.raises(error, match=rf"`{name}` must be a positive number"):
            sj.PredictiveController(**{**good, name: value})


@pytest.mark.parametrize(
    "kind",
    [
        decimal.Decimal,
        fractions.Fraction,
        np.float32,
        lambda v: jnp.asarray(v, jnp.float32),
        lambda v: np.asarray(v),
    ],
    ids=["decimal", "fraction", "numpy-float32", "jax-0d", "numpy-0d"],
)
def test_settings_of_every_real_number_type_are_floats(kind):
    # A setting given as a decimal, a fraction, a NumPy scalar or a 0-d array is
    # the float it holds: kept as a Python float in the static fields (a decimal
    # in a field failed at run time, mixed with a traced array), and the run is
    # the one with floats, to the bit.
    def value(text):
        number = fractions.Fraction(text)
        if kind is fractions.Fraction:
            return number
        as_float = float(number)
        return kind(repr(as_float)) if kind is decimal.Decimal else kind(as_float)

    texts = dict(
        rtol="1/1000", atol="1/1000", dtmin="1/1000", dtmax="2", dt0="1/8",
        safety="9/10", factormin="1/5", factormax="5",
    )  # fmt: skip
    # What each value holds, as a Python float (from the value given, not from
    # the controller).
    expected = {name: float(value(text)) for name, text in texts.items()}
    controller = sj.PredictiveController(
        **{name: value(text) for name, text in texts.items()}
    )
    for name in texts:
        assert type(getattr(controller, name)) is float, name
        assert getattr(controller, name) == expected[name], name
    root_finder = sj.BracketedNewton(rtol=value("1/4096"), atol=value("1/1024"))
    assert type(root_finder.rtol) is float and type(root_finder.atol) is float
    floats = sj.PredictiveController(**expected)
    float_finder = sj.BracketedNewton(
        rtol=float(value("1/4096")), atol=float(value("1/1024"))
    )
    runs = [
        _layer(sj.IzhikevichDynamics(), stepsize_controller=c, root_finder=r).simulate(
            _strong_inputs(), 10.0, max_spikes=16
        )
        for c, r in ((controller, root_finder), (floats, float_finder))
    ]
    assert int(jnp.sum(runs[0].counts)) > 0
    np.testing.assert_array_equal(runs[0].spike_times, runs[1].spike_times)
    np.testing.assert_array_equal(runs[0].final_state.v, runs[1].final_state.v)
    layer = _layer(sj.IzhikevichDynamics(), dt_init=value("1/20"), rtol=value("1/1000"))
    assert type(layer.stepsize_controller.dt0) is float
    assert layer.stepsize_controller.rtol == float(value("1/1000"))


def test_delay_and_dtype_settings():
    for bad in ("1", True):
        with pytest.raises(TypeError, match="`delay` must be a real number"):
            _layer(recurrent=True, delay=bad)
    with pytest.raises(
        ValueError, match=r"`dtype` must be a floating dtype, got 'banana'"
    ):
        _layer(dtype="banana")
    # A floating dtype JAX has no arrays of (x86-64's long double), or one it has
    # no arithmetic with others in (float8), ended in JAX's own error.
    with pytest.raises(ValueError, match="`dtype` float8_e4m3fn is not one the"):
        _layer(dtype="float8_e4m3fn")
    if np.dtype(np.longdouble).itemsize > 8:
        name = np.dtype(np.longdouble).name
        with pytest.raises(ValueError, match=f"`dtype` {name} is not one the"):
            _layer(dtype=np.longdouble)
    # Float64 where JAX runs float32: the layer was float32 without a word.
    with jax.enable_x64(False):
        for make in (
            lambda: _layer(dtype=jnp.float64),
            lambda: sj.LeakyReadout(N_IN, N, dtype=np.float64, key=_KEY),
        ):
            with pytest.raises(ValueError, match="`dtype` float64 is not available"):
                make()
    assert _layer(dtype=jnp.float64).weight.dtype == jnp.float64
    with jax.enable_x64(False):  # `float`: JAX's default float, not float64
        assert _layer(dtype=float).weight.dtype == jnp.float32
        assert _layer(dtype="float").weight.dtype == jnp.float32


class _FloatTau(sj.AbstractDynamics):
    """A leaky neuron whose `__check_init__` insists on a Python float `tau`."""

    tau: float
    parameter_names = ("tau",)

    def __check_init__(self):
        if not isinstance(self.tau, float):
            raise TypeError(f"tau must be a float, got {type(self.tau).__name__}")

    def init_state(self, n_neurons, dtype):
        return sj.LIFState(jnp.zeros((n_neurons,), dtype))

    def vector_field(self, t, y, current):
        return sj.LIFState((current - y.v) / self.tau)

    def threshold(self, y):
        return y.v - 1.0

    def reset(self, y):
        return sj.LIFState(jnp.zeros_like(y.v))

    def voltage(self, y):
        return y.v

    def constraints(self, y):
        return {"tau > 0": jnp.asarray(self.tau) > 0}


def test_model_parameters_beyond_the_layer_dtype():
    # Refused when the layer is built (they ran as inf, reported as NaN/inf input).
    dyn = sj.ODELIFDynamics(tau_mem=1e6)
    for make in (
        lambda: sj.SpikingODELayer(N_IN, N, dyn, dtype=jnp.float16, key=_KEY),
        lambda: sj.LeakyReadout(N_IN, N, dyn, dtype=jnp.float16, key=_KEY),
    ):
        with pytest.raises(
            ValueError,
            match=r"`dynamics.tau_mem` holds values beyond the range of float16 "
            r"\(the layer's dtype\), got \[1000000.0\]",
        ):
            make()
    per_neuron = sj.ODELIFDynamics(v_threshold=np.array([1.0, 2.0, 1e40]))
    with pytest.raises(ValueError, match=r"`dynamics.v_threshold` .* got \[1e\+40\]"):
        sj.SpikingODELayer(N_IN, 3, per_neuron, dtype=jnp.float32, key=_KEY)
    # In range: built, and the float64 layer takes what float16 cannot.
    sj.SpikingODELayer(
        N_IN, N, sj.ODELIFDynamics(tau_mem=6e4), dtype=jnp.float16, key=_KEY
    )
    sj.SpikingODELayer(N_IN, 3, per_neuron, dtype=jnp.float64, key=_KEY)
    # Parameters that, rounded to the layer's dtype, fail the model's conditions:
    # refused naming the condition and the rounding (they were built, and the run
    # said "need tau_mem > 0" for a positive value). A subnormal is flushed to 0,
    # as XLA does. Values whose rounding breaks no condition are taken.
    for dyn, dtype, condition in [
        (sj.ODELIFDynamics(tau_mem=1e-46), jnp.float32, r"`tau_mem` must be > 0"),
        (sj.ODELIFDynamics(tau_mem=1e-40), jnp.float32, r"`tau_mem` must be > 0"),
        (sj.ODELIFDynamics(v_reset=1 - 1e-10), jnp.float32, r"`v_reset` must be <"),
        (sj.ODELIFDynamics(tau_mem=1e-8), jnp.float16, r"`tau_mem` must be > 0"),
    ]:
        with pytest.raises(
            ValueError,
            match=rf"ODELIFDynamics's parameters as the layer's dtype "
            rf"{jnp.dtype(dtype).name} holds them .* fail its conditions: {condition}",
        ):
            sj.SpikingODELayer(N_IN, N, dyn, dtype=dtype, key=_KEY)
        sj.SpikingODELayer(N_IN, N, dyn, dtype=jnp.float64, key=_KEY)
    # A user model's own check that wants its parameter as given (a Python float)
    # gets it so, where the dtype leaves it alone or rounds it harmlessly.
    for dyn, dtype in [
        (_FloatTau(0.1), jnp.float32),
        (sj.ODELIFDynamics(v_rest=1e-50), jnp.float32),
        (sj.ODELIFDynamics(v_rest=0.1 + 0.2 - 0.3), jnp.float16),
        (sj.ODELIFDynamics(v_reset=np.array([0.0, 1e-50, 0.1, 0.2])), jnp.float32),
        (sj.AdExDynamics(a=1e-8), jnp.float16),
    ]:
        sj.SpikingODELayer(N_IN, N, dyn, dtype=dtype, key=_KEY)


@pytest.mark.parametrize("value", [True, "20", None, np.array([True, True])])
def test_model_parameters_that_are_not_numbers(value):
    # `tau_mem=True` was a 1 ms time constant, `t_ref=True` a 1 ms refractory period.
    with pytest.raises(TypeError, match="`tau_mem` must be a real number"):
        sj.ODELIFDynamics(tau_mem=value)
    if value is not None:  # (no refractory period)
        with pytest.raises(TypeError, match="`t_ref` must be a real number"):
            sj.ODELIFDynamics(t_ref=value)


def test_model_parameters_beyond_their_type():
    with jax.enable_x64(False):
        with pytest.raises(
            ValueError, match=r"`tau_mem` holds values beyond .*1e\+300"
        ):
            sj.ODELIFDynamics(tau_mem=np.float64(1e300))
    with pytest.raises(ValueError, match="`tau_mem` must be finite"):
        sj.ODELIFDynamics(tau_mem=10**400)
    # A Python int of any size, a fraction: read as floats.
    assert float(sj.ODELIFDynamics(tau_mem=2**70).tau_mem) == float(2**70)
    assert float(sj.ODELIFDynamics(tau_mem=fractions.Fraction(41, 2)).tau_mem) == 20.5
    np.testing.assert_array_equal(
        sj.ODELIFDynamics(tau_mem=range(10, 14)).tau_mem, [10, 11, 12, 13]
    )


def test_arrays_swapped_into_a_layer_are_checked():
    # `eqx.tree_at` builds a layer without `__init__`: its arrays are checked when
    # it runs, by their own names (a wrong weight blamed `inputs` or `state`).
    layer = _layer()
    x = np.ones((T, N_IN)) * 0.1
    train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
    swap = lambda where, value: eqx.tree_at(where, layer, value)
    cases = [
        (
            swap(lambda m: m.weight, jnp.ones((N, N))),
            ValueError,
            r"`weight` must have shape \(n_neurons, n_inputs\) = \(4, 3\), got \(4, 4\)",
        ),
        (
            swap(lambda m: m.weight, jnp.ones((N_IN, N))),
            ValueError,
            r"`weight` must have shape .* got \(3, 4\)",
        ),
        (
            swap(lambda m: m.weight, jnp.ones((N, N_IN), jnp.int32)),
            TypeError,
            "`weight` must be a real floating array, got int32",
        ),
        (
            swap(lambda m: m.weight, jnp.ones((N, N_IN), jnp.complex64)),
            TypeError,
            "`weight` must be a real floating array, got complex64",
        ),
        (
            swap(lambda m: m.dynamics.tau_mem, jnp.array([10.0, 20.0])),
            ValueError,
            r"`tau_mem` must be a scalar or have shape \(4,\)",
        ),
        (
            swap(lambda m: m.dynamics.tau_mem, jnp.ones((N, N))),
            ValueError,
            r"`tau_mem` must be a scalar or have shape \(4,\)",
        ),
    ]
    for bad, error, match in cases:
        # (`step` and an `OnlineLayer`'s step: an int32 weight failed there with
        # NumPy's "data type <class 'numpy.int32'> not inexact".)
        for run in (
            lambda: bad.simulate(x, 1.0),
            lambda: bad.forward(x, 1.0),
            lambda: bad.simulate(train, t_end=5.0),
            lambda: bad.step(sj.LIFState(jnp.zeros(N)), x[0], 1.0),
            lambda: sj.OnlineLayer(bad).step(x[0], 1.0),
        ):
            with pytest.raises(error, match=match):
                run()
    rec = _layer(recurrent=True, delay=0.5)
    bad = eqx.tree_at(lambda m: m.recurrent_weight, rec, jnp.ones((N, N + 1)))
    with pytest.raises(
        ValueError, match=r"`recurrent_weight` must have shape .*\(4, 4\), got \(4, 5\)"
    ):
        bad.simulate(train, t_end=5.0)


def test_numbers_swapped_into_a_model_are_read_as_parameters():
    # `eqx.tree_at` skips the model's own conversion: a Python number there
    # failed with "'float' object has no attribute 'astype'", a string or a bool
    # now fails naming the parameter (it would read "20" as 20 ms, True as 1 ms).
    layer = _layer()
    x = np.ones((T, N_IN))
    train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
    swap = lambda value: eqx.tree_at(lambda m: m.dynamics.tau_mem, layer, value)
    same = swap(jnp.asarray(10.0, layer.dtype))
    for value in (10.0, 10, fractions.Fraction(20, 2), np.float32(10.0)):
        np.testing.assert_array_equal(swap(value).forward(x, 1.0), same.forward(x, 1.0))
        np.testing.assert_array_equal(
            sj.OnlineLayer(swap(value)).step(x[0], interval=1.0),
            sj.OnlineLayer(same).step(x[0], interval=1.0),
        )
        got = swap(value).simulate(train, t_end=5.0).final_state.v
        np.testing.assert_array_equal(
            got, same.simulate(train, t_end=5.0).final_state.v
        )
    # A boolean array (a mask) is read as 0 and 1, as before.
    mask = np.array([True, False, True, False])
    masked = eqx.tree_at(lambda m: m.dynamics.v_rest, layer, jnp.asarray(mask))
    ones = eqx.tree_at(lambda m: m.dynamics.v_rest, layer, jnp.asarray(mask, float))
    np.testing.assert_array_equal(masked.forward(x, 1.0), ones.forward(x, 1.0))
    for value in ("20", True, np.True_, jnp.asarray(True)):
        for run in (
            lambda: swap(value).forward(x, 1.0),
            lambda: swap(value).simulate(train, t_end=5.0),
        ):
            with pytest.raises(
                TypeError, match="`tau_mem` of `ODELIFDynamics` must be a real number"
            ):
                run()


def test_arrays_swapped_into_a_readout_are_checked():
    # A readout's weight is checked when it runs, as a layer's: a wider one ran on
    # its first columns, a narrower one blamed the spike train.
    readout = sj.LeakyReadout(N_IN, 2, key=jax.random.key(0))
    train = sj.SpikeTrain(jnp.array([1.0, 2.0]), jnp.array([0, N_IN - 1]))
    swap = lambda where, value: eqx.tree_at(where, readout, value)
    shape = r"`weight` must have shape \(n_outputs, n_inputs\) = \(2, 3\), got "
    cases = [
        (jnp.ones((2, N_IN + 2)), ValueError, shape + r"\(2, 5\)"),
        (jnp.ones((2, N_IN - 1)), ValueError, shape + r"\(2, 2\)"),
        (jnp.ones((N_IN, 2)), ValueError, shape + r"\(3, 2\)"),
        (
            jnp.ones((2, N_IN), jnp.int32),
            TypeError,
            "`weight` must be a real floating array, got int32",
        ),
    ]
    for weight, error, match in cases:
        with pytest.raises(error, match=match):
            swap(lambda m: m.weight, weight).simulate(train, t_end=5.0)
    tau = jnp.array([10.0, 20.0, 30.0])
    with pytest.raises(
        ValueError, match=r"`tau_mem` must be a scalar or have shape \(2,\)"
    ):
        swap(lambda m: m.dynamics.tau_mem, tau).simulate(train, t_end=5.0)
    ok = swap(lambda m: m.weight, jnp.ones((2, N_IN))).simulate(train, t_end=5.0)
    assert ok.max_voltage.shape == (2,)


@pytest.mark.parametrize("name", ["tau_mem", "tau_syn", "C_mem"])
def test_a_readouts_model_conditions_are_checked_at_run_time(name):
    # A readout ran with a negative time constant or capacitance swapped in (or
    # trained there) and reported success with a meaningless maximum.
    readout = sj.LeakyReadout(N_IN, 2, key=jax.random.key(0))
    train = sj.SpikeTrain(jnp.array([1.0, 2.0]), jnp.array([0, N_IN - 1]))
    bad = eqx.tree_at(lambda m: getattr(m.dynamics, name), readout, jnp.asarray(-5.0))
    sol = bad.simulate(train, t_end=20.0, throw=False)
    assert sol.result == sj.RESULTS.invalid_parameters
    with pytest.raises(Exception, match=rf"CubaLIFDynamics .*need {name} > 0"):
        bad.simulate(train, t_end=20.0)
    # Its threshold and reset do not apply: a readout may start above threshold.
    high = eqx.tree_at(lambda m: m.dynamics.v_threshold, readout, jnp.asarray(-1.0))
    assert high.simulate(train, t_end=20.0).result == sj.RESULTS.successful
    # Inside a network, the network's result says so too.
    net = sj.SpikingODENetwork([sj.SpikingODELayer(N_IN, N_IN, key=_KEY), bad])
    out = net.simulate(train, t_end=20.0, throw=False)
    assert out.result == sj.RESULTS.invalid_parameters


@pytest.mark.parametrize("throw", [None, 0, "no", [], 1.0])
def test_throw_must_be_a_bool(throw):
    # `None`, `0` or `[]` returned a failed run without a word, and `"no"` raised.
    layer = sj.SpikingODELayer(N_IN, N, key=_KEY)
    x = np.ones((T, N_IN))
    train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
    readout = sj.LeakyReadout(N_IN, 2, key=_KEY)
    net = sj.SpikingODENetwork([layer, sj.LeakyReadout(N, 2, key=_KEY)])
    calls = [
        lambda: layer.forward(x, 1.0, throw=throw),
        lambda: layer.simulate(x, 1.0, throw=throw),
        lambda: layer.simulate(train, t_end=5.0, throw=throw),
        lambda: layer.step(layer.init_state(), x[0], 1.0, throw=throw),
        lambda: readout.simulate(train, t_end=5.0, throw=throw),
        lambda: net.simulate(train, t_end=5.0, throw=throw),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="`throw` must be True or False, got"):
            call()


def test_numpy_bools_are_flags():
    # `np.True_` passed the check but reached the compiled run as an array
    # (a `TracerBoolConversionError`).
    layer = sj.SpikingODELayer(N_IN, N, key=_KEY)
    x = np.ones((T, N_IN))
    for flag in (np.True_, np.False_):
        np.testing.assert_array_equal(
            layer.forward(x, 1.0, throw=flag), layer.forward(x, 1.0)
        )
        np.testing.assert_array_equal(
            layer.simulate(x, 1.0, throw=flag).counts, layer.simulate(x, 1.0).counts
        )


def test_states_are_checked_against_the_dtype_and_step_needs_one():
    # A state beyond the layer's dtype became -inf when cast (`OnlineLayer.reset`
    # stored it so) and failed at run time as a generic non-finite input; `step`
    # with `None` started from rest without a word.
    layer = sj.SpikingODELayer(N_IN, N, dtype=jnp.float32, key=_KEY)
    huge = type(layer.init_state())(np.full(N, -1e39))
    match = (
        r"`state.v` must fit the layer's dtype float32 .* got -1e\+39 at state.v\[0\]"
    )
    with pytest.raises(ValueError, match=match):
        layer.forward(np.ones((T, N_IN)), 1.0, state=huge)
    with pytest.raises(ValueError, match=match):
        sj.OnlineLayer(layer).reset(huge)
    with pytest.raises(TypeError, match="`state` of `step` must be a state"):
        layer.step(None, np.ones(N_IN), 1.0)  # type: ignore[arg-type]


def test_arrays_of_the_functional_api_are_checked():
    # `sj.integrate` and `sj.integrate_events` passed these to raw JAX errors
    # (a while loop's carry types, a modulo by zero, `ceil` of a complex).
    dyn = sj.ODELIFDynamics()
    weight, inputs = jnp.ones((2, 3)), jnp.ones((4, 3))
    state = dyn.init_state(2, jnp.float32)
    ctrl = sj.PredictiveController(rtol=1e-6, atol=1e-6)
    dense = lambda w, x, y: sj.integrate(
        dyn, sj.Exact(), w, x, 1.0, y, stepsize_controller=ctrl
    )
    events = lambda w, x, y: sj.integrate_events(dyn, w, y, inputs=x, interval=1.0)
    floating = r"`weight` \(with `inputs`\) must give a real floating dtype, got"
    for run in (dense, events):
        assert run(weight, inputs, state).counts.shape == (4, 2)
        with pytest.raises(ValueError, match=r"`state.v` must have the shape of "):
            run(weight, inputs, sj.LIFState(v=jnp.zeros((2, 2))))
        with pytest.raises(TypeError, match=floating + " int32"):
            run(weight.astype(jnp.int32), inputs.astype(jnp.int32), state)
        with pytest.raises(TypeError, match=floating + " complex"):
            run(weight.astype(jnp.complex64), inputs, state)
        with pytest.raises(ValueError, match=r"`weight` must have a row per neuron"):
            run(jnp.ones((0, 3)), inputs, dyn.init_state(0, jnp.float32))
        # Integer inputs with a float weight: the float dtype.
        assert run(weight, inputs.astype(jnp.int32), state).counts.dtype == weight.dtype


# -- call arguments ----------------------------------------------------------------


@pytest.fixture(scope="module")
def layer():
    return _layer()


def _calls(layer):
    """Every entry point, as functions of (x_sequence, interval)."""
    online = sj.OnlineLayer(layer)
    return {
        "forward": lambda x, dt: layer.forward(x, dt),
        "simulate": lambda x, dt: layer.simulate(x, dt),
        "step": lambda x, dt: layer.step(layer.init_state(), x[0], dt),
        "online": lambda x, dt: online.step(x[0], interval=dt),
    }


@pytest.mark.parametrize("entry", ["forward", "simulate", "step", "online"])
@pytest.mark.parametrize(
    "interval, shown",
    [
        (0.0, "0.0"),
        (-1.0, "-1.0"),
        (np.nan, "nan"),
        (np.inf, "inf"),
        (jnp.array(-2.0), "-2.0"),
    ],
)
def test_bad_interval(layer, entry, interval, shown):
    call = _calls(layer)[entry]
    x = np.ones((T, N_IN))
    with pytest.raises(
        ValueError, match=rf"`interval` must be finite and > 0 \(ms\), got {shown}"
    ):
        call(x, interval)


@pytest.mark.parametrize("entry", ["forward", "simulate", "step", "online"])
@pytest.mark.parametrize(
    "interval",
    ["1", True, np.array(True), [1, "2"], [True, 2.0], fractions.Fraction(1)],
)
def test_interval_that_is_not_a_number(layer, entry, interval):
    # Not read as a time (`True` as 1 ms, "1" as 1 ms), nor failing inside NumPy.
    call = _calls(layer)[entry]
    with pytest.raises(TypeError, match=r"`interval` must be (a real number|an int)"):
        call(np.ones((T, N_IN)), interval)


@pytest.mark.parametrize("entry", ["forward", "simulate"])
def test_interval_of_wrong_shape(layer, entry):
    # A scalar, or one length per interval (T of them); nothing else.
    pattern = (
        rf"`interval` must be a scalar \(ms\) or one length per interval, "
        rf"shape \({T},\), got shape \({T + 1},\)"
    )
    with pytest.raises(ValueError, match=pattern):
        _calls(layer)[entry](np.ones((T, N_IN)), np.ones(T + 1))
    with pytest.raises(ValueError, match=r"got shape \(1, 1\)"):
        _calls(layer)[entry](np.ones((T, N_IN)), np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"must be finite and > 0 \(ms\)"):
        _calls(layer)[entry](np.ones((T, N_IN)), np.r_[np.ones(T - 1), -1.0])


@pytest.mark.parametrize("entry", ["forward", "simulate"])
@pytest.mark.parametrize("shape", [(N_IN,), (T, N_IN + 1), (0, N_IN), (2, T, N_IN)])
def test_inputs_wrong_shape(layer, entry, shape):
    call = _calls(layer)[entry]
    with pytest.raises(ValueError) as info:
        call(np.ones(shape), 1.0)
    msg = str(info.value)
    assert "`inputs` must have shape (time, n_inputs) = (T, 3)" in msg
    assert f"got shape {shape}" in msg


@pytest.mark.parametrize("entry", ["step", "online"])
@pytest.mark.parametrize("shape", [(N_IN + 1,), (1, N_IN), ()])
def test_x_wrong_shape(layer, entry, shape):
    step = (
        (lambda x: layer.step(layer.init_state(), x, 1.0))
        if entry == "step"
        else (lambda x: sj.OnlineLayer(layer).step(x, 1.0))
    )
    expected = f"`x` must have shape (n_inputs,) = (3,), got {shape}."
    with pytest.raises(ValueError, match=re.escape(expected)):
        step(np.ones(shape))


@pytest.mark.parametrize("entry", ["step", "online"])
def test_a_step_takes_one_interval(layer, entry):
    """`step` advances one interval: an interval of shape (1,) was taken as one
    length per interval by `layer.step` (the runner refused it)."""
    x = np.ones(N_IN)
    for interval in (np.array([1.0]), [1.0, 2.0]):
        with pytest.raises(ValueError, match=r"`interval` must be a scalar \(ms\)"):
            if entry == "step":
                layer.step(layer.init_state(), x, interval)
            else:
                sj.OnlineLayer(layer).step(x, interval)


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_bad_max_spikes(layer, bad):
    error = ValueError if bad == -1 else TypeError
    with pytest.raises(error, match=rf"`max_spikes` must be an int >= 0, got {bad}"):
        layer.simulate(np.ones((T, N_IN)), 1.0, max_spikes=bad)


def test_max_spikes_beyond_int32(layer):
    # Spike slots are counted in int32: a larger buffer is refused by name, on the
    # dense path, the event-driven one and a network's layers (not an
    # OverflowError from inside JAX).
    pattern = r"`max_spikes` must be at most 2147483647 .* got 2147483648"
    train = sj.SpikeTrain(jnp.array([1.0]), jnp.array([0]))
    calls = [
        lambda m: layer.simulate(np.ones((T, N_IN)), 1.0, max_spikes=m),
        lambda m: layer.simulate(train, t_end=5.0, max_spikes=m),
        lambda m: sj.SpikingODENetwork([layer]).simulate(
            train, t_end=5.0, max_spikes=m
        ),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=pattern):
            call(2**31)


def test_bad_state(layer):
    x = np.ones((T, N_IN))
    with pytest.raises(
        ValueError, match=r"`state` arrays must have shape \(4,\), got \(3,\)"
    ):
        layer.simulate(x, 1.0, state=sj.LIFState(jnp.zeros(3)))
    with pytest.raises(ValueError, match=r"`state` must be a LIFState"):
        layer.forward(x, 1.0, state=jnp.zeros(N))
    # A state that is not finite, named by its entry before the run (the run
    # reported NaN or inf in "the inputs, the parameters or the initial state").
    for bad in (np.nan, -np.inf):
        state = sj.LIFState(jnp.array([0.0, 0.0, 0.0, bad]))
        match = rf"`state.v` must be finite, got {bad} at state.v\[3\]"
        for call in (
            lambda: layer.simulate(x, 1.0, state=state),
            lambda: layer.forward(x, 1.0, state=state),
            lambda: layer.step(state, x[0], 1.0),
        ):
            with pytest.raises(ValueError, match=match):
                call()
    # Traced, the run reports it.
    sol = eqx.filter_jit(
        lambda lyr, st: lyr.simulate(x, 1.0, state=st, max_spikes=4, throw=False)
    )(layer, sj.LIFState(jnp.array([0.0, jnp.nan, 0.0, 0.0])))
    assert sol.result == sj.RESULTS.nonfinite_input


def test_a_state_without_the_models_refractory_field_is_named():
    # The same class serves models with and without a refractory period: the
    # message said a LIFState must be a LIFState.
    layer = _layer(sj.ODELIFDynamics(t_ref=1.0))
    match = r"`refractory` is None where this layer's model needs an array"
    with pytest.raises(ValueError, match=match):
        layer.forward(np.ones((T, N_IN)), 1.0, state=sj.LIFState(jnp.zeros(N)))
    with pytest.raises(ValueError, match=match):
        sj.OnlineLayer(_layer()).layer = layer
    with pytest.raises(ValueError, match=r"`refractory` is set where .* needs None"):
        _layer().forward(np.ones((T, N_IN)), 1.0, state=layer.init_state())
    # Other structures within the fields: both given.
    adex = _layer(sj.AdExDynamics())
    z = jnp.zeros(N)
    with pytest.raises(ValueError, match=r"\(its structure is PyTreeDef.*, not "):
        adex.forward(np.ones((T, N_IN)), 1.0, state=sj.AdExState(v=(z, z), w=z))


def test_finite_inputs_beyond_the_layer_dtype_are_named():
    # A finite float64 input that is inf in a float32 layer was reported, after
    # the cast, as NaN or inf in the inputs.
    layer = _layer(dtype=jnp.float32)
    x = np.zeros((T, N_IN))
    x[1, 2] = -1e39
    match = r"must fit the layer's dtype float32 .*got -1e\+39 at {}"
    with pytest.raises(ValueError, match=match.format(r"inputs\[1, 2\]")):
        layer.forward(x, 1.0)
    with pytest.raises(ValueError, match=match.format(r"inputs\[1, 2\]")):
        layer.simulate(x, 1.0)
    with pytest.raises(ValueError, match=match.format(r"x\[2\]")):
        layer.step(layer.init_state(), x[1], 1.0)
    with pytest.raises(ValueError, match=match.format(r"x\[2\]")):
        sj.OnlineLayer(layer).step(x[1], 1.0)
    # The largest float32 itself fits (its weights zero: no current overflows).
    x[1, 2] = float(np.finfo(np.float32).max)
    silent = eqx.tree_at(lambda m: m.weight, layer, jnp.zeros((N, N_IN), jnp.float32))
    assert np.all(np.asarray(silent.forward(x, 1.0)) == 0)


def test_inputs_are_checked_as_the_run_casts_them():
    # Near float16's largest value NumPy and XLA round differently: the check
    # took NumPy's cast (65504) where the run's gives inf.
    layer = _layer(dtype=jnp.float16)
    x = np.zeros((T, N_IN))
    x[0, 1] = 65519.99999999999
    assert np.isfinite(np.float16(x[0, 1]))
    assert not np.isfinite(np.asarray(jnp.asarray(x).astype(jnp.float16)))[0, 1]
    with pytest.raises(ValueError, match=r"must fit the layer's dtype float16"):
        layer.forward(x, 1.0)
    # A list holding traced values, as `jnp.asarray` takes it.
    layer = _layer()
    state = layer.init_state()
    step = eqx.filter_jit(lambda a: layer.step(state, [a, 0.5, 0.0], 20.0)[1])
    counts = layer.step(state, np.array([1.5, 0.5, 0.0]), 20.0)[1]
    np.testing.assert_array_equal(step(jnp.asarray(1.5)), counts)


def test_durations_are_not_inputs():
    # NumPy counts timedelta64 as an integer type: OnlineLayer.step ran on
    # them as numbers, and layer.step failed inside JAX without naming `x`.
    layer = _layer()
    x = np.array([1, 2, 3], "timedelta64[s]")
    with pytest.raises(TypeError, match=r"`x` must be .*numbers"):
        sj.OnlineLayer(layer).step(x, 1.0)
    with pytest.raises(TypeError, match=r"`x` must be .*numbers"):
        layer.step(layer.init_state(), x, 1.0)
    # Nor are JAX's keys (NumPy has no dtype for them).
    with pytest.raises(TypeError, match=r"`x` must be real numbers, got dtype key"):
        sj.OnlineLayer(layer).step(jax.random.key(0), 1.0)


def test_spike_times_that_are_bools_or_ragged_are_refused():
    # `True` was read as a spike at 1 ms; ragged lists failed inside NumPy
    # without naming the argument.
    from snode_jax.datasets import yin_yang_spikes

    with pytest.raises(
        TypeError, match=r"`times` must be numbers \(ms\), got dtype bool"
    ):
        sj.SpikeTrain(np.array([True, False]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"`times` must be a rectangular array"):
        sj.SpikeTrain([[1.0, 2.0], [3.0]], [[0, 0], [0]])
    with pytest.raises(ValueError, match=r"`features` must be a rectangular array"):
        yin_yang_spikes([[0.1, 0.2, 0.3, 0.4], [0.1]])


def test_complex_values_are_refused(layer):
    # NumPy and JAX would keep the real part, with only a warning.
    x = np.ones((T, N_IN))
    calls = {
        "inputs": lambda: layer.forward(x + 1j, 1.0),
        "interval": lambda: layer.forward(x, 1.0 + 1j),
        "state": lambda: layer.forward(x, 1.0, state=sj.LIFState(jnp.ones(N) * 1j)),
        "tau_mem": lambda: sj.ODELIFDynamics(tau_mem=20.0 + 5j),
        "times": lambda: sj.SpikeTrain(np.array([1.0 + 1j]), np.array([0])),
        "t_end": lambda: layer.simulate(
            sj.SpikeTrain(np.array([1.0]), np.array([0])), t_end=5.0 + 0j
        ),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=rf"`{name}` must be real, got complex"):
            call()
    # Traced: refused alike (the message gives the dtype).
    with pytest.raises(TypeError, match=r"`inputs` must be real, .*traced, dtype"):
        jax.jit(lambda x: layer.forward(x, 1.0))(jnp.ones((T, N_IN), jnp.complex64))


def test_input_times_at_the_end_are_judged_in_the_run_dtype():
    # A float64 time that rounds to t_end in a float32 layer is at the end, with
    # and without `jax.jit` (it was refused eagerly and accepted traced); one
    # past it in float32 is refused both ways.
    layer = _layer(dtype=jnp.float32)
    run = lambda layer, times: layer.simulate(
        sj.SpikeTrain(times, jnp.zeros(times.shape, jnp.int32)), t_end=50.0
    )
    at_end = np.array([1.0, 50.0 + 1e-7])
    assert np.float32(at_end[1]) == np.float32(50.0)
    for call in (run, eqx.filter_jit(run)):
        sol = call(layer, jnp.asarray(at_end, jnp.float64))
        assert sol.result == sj.RESULTS.successful
    past = jnp.asarray([1.0, 50.0 + 1e-4], jnp.float64)
    with pytest.raises(ValueError, match=r"Input spike `times` must be <= t_end"):
        run(layer, past)
    with pytest.raises(eqx.EquinoxRuntimeError):
        eqx.filter_jit(run)(layer, past)


def test_times_beyond_the_run_dtype_are_refused():
    # Finite as Python floats, infinite in float32: the run failed with a message
    # that `t_end` (or `interval`) must be finite.
    layer = _layer(dtype=jnp.float32)
    train = sj.SpikeTrain(np.array([1.0]), np.array([0]))
    finite = r"finite in the run's dtype float32 \(at most 3.40282\d*e\+38 ms\)"
    with pytest.raises(ValueError, match=rf"`t_end` must be {finite}, got 1e\+39"):
        layer.simulate(train, t_end=1e39)
    readout = sj.LeakyReadout(N_IN, 2, dtype=jnp.float32, key=jax.random.key(0))
    with pytest.raises(ValueError, match=rf"`t_end` must be {finite}, got 1e\+39"):
        readout.simulate(train, t_end=1e39)
    x = np.ones((T, N_IN)) * 0.1
    end = r"end time finite in its dtype float32 \(at most 3.40282\d*e\+38 ms\)"
    for call in (layer.simulate, layer.forward):
        with pytest.raises(ValueError, match=rf"`interval` must keep the run's {end}"):
            call(x, 1e39)
        # Each interval fits, the run's end does not.
        with pytest.raises(ValueError, match=r"got 2e\+38, ending at 6e\+38 ms"):
            call(x, 2e38)
        lengths = np.full(T, 1.0)
        lengths[-1] = 3.3e38
        lengths[0] = 2e37
        with pytest.raises(ValueError, match=r"`interval` must keep the run's end"):
            call(x, lengths)
    with pytest.raises(ValueError, match=r"`interval` must keep the run's end"):
        sj.OnlineLayer(layer).step(x[0], interval=1e39)
    # Below the smallest float32: 0 (which failed at run time as not > 0).
    tiny = r"`interval` must be > 0 in the run's dtype float32, where 1e-46 rounds"
    for call in (layer.simulate, layer.forward):
        with pytest.raises(ValueError, match=tiny):
            call(x, 1e-46)
    with pytest.raises(ValueError, match=tiny):
        sj.OnlineLayer(layer).step(x[0], interval=1e-46)
    # So is `t_end` (it failed at run time, not naming the value).
    with pytest.raises(ValueError, match="`t_end` must be > 0 in the run's dtype "):
        layer.simulate(train, t_end=1e-46)
    # Up to the largest float32, a readout (no pieces to count) runs.
    sol = readout.simulate(train, t_end=3e38)
    assert np.isfinite(np.asarray(sol.max_voltage)).all()


def test_traced_intervals_whose_end_overflows_are_reported():
    # Traced (under `jit`), an interval whose run ended past the largest float16
    # ran and reported success, its spike past that end recorded as `inf` (padding).
    layer = sj.SpikingODELayer(
        1, 1, sj.ODELIFDynamics(tau_mem=1000.0), dtype=jnp.float16, key=_KEY
    )
    layer = eqx.tree_at(lambda m: m.weight, layer, jnp.array([[2.54e-3]], jnp.float16))
    x = np.zeros((94, 1))
    x[-1] = 1.0  # 94 x 700 ms = 65800 ms > 65504, the largest float16
    need = r"ODELIFDynamics found at run time: need the run's end time finite"
    recurrent = eqx.tree_at(
        lambda m: m.recurrent_weight,
        layer,
        jnp.zeros((1, 1), jnp.float16),
        is_leaf=lambda v: v is None,
    )
    for lay in (layer, recurrent):
        for interval in (700.0, np.full(94, 700.0)):
            iv = jnp.asarray(interval, jnp.float16)
            run = eqx.filter_jit(lambda m, x, iv, t: m.simulate(x, iv, throw=t))
            sol = run(lay, x, iv, False)
            assert sol.result == sj.RESULTS.invalid_parameters
            with pytest.raises(Exception, match=need):
                run(lay, x, iv, True)
            # 90 intervals end at 63000 ms: a run.
            ok = run(lay, x[:90], iv[:90] if iv.ndim else iv, True)
            assert ok.result == sj.RESULTS.successful


def test_spike_trains_of_strings_or_scalars_are_refused():
    with pytest.raises(TypeError, match=r"`times` must be numbers .*got dtype <U3"):
        sj.SpikeTrain(["1.0"], [0])
    with pytest.raises(TypeError, match=r"`sources` must be numbers .*got dtype <U1"):
        sj.SpikeTrain([1.0], ["a"])
    with pytest.raises(
        ValueError, match=r"got shapes \(\) and \(\) \(one spike is `SpikeTrain\(\[t\]"
    ):
        sj.SpikeTrain(1.0, 0)
    with pytest.raises(
        ValueError, match=r"must have the same shape .* \(1,\) and \(2,\)"
    ):
        sj.SpikeTrain([1.0], [0, 1])
    # bfloat16 (a floating dtype of NumPy kind "V", from ml_dtypes) is a number.
    import ml_dtypes

    train = sj.SpikeTrain(np.array([1.0, 2.5], ml_dtypes.bfloat16), [0, 1])
    np.testing.assert_array_equal(np.asarray(train.times, np.float32), [1.0, 2.5])


def test_values_that_32_bits_would_change_are_refused():
    # Without float64, JAX converts int64 to int32 (wrapping around) and float64
    # to float32 (overflowing to inf): a source would land on another input, a
    # spike time would become padding.
    from snode_jax.sweep import sweep

    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"`sources` holds integers outside"):
            sj.SpikeTrain(np.array([1.0, 2.0]), np.array([2**32 + 1, 0], np.int64))
        with pytest.raises(ValueError, match=r"`times` holds values beyond .*1e\+39"):
            sj.SpikeTrain(np.array([1.0, 1e39]), np.array([0, 1]))
        with pytest.raises(ValueError, match=r"`params\['a'\]` holds integers outside"):
            sweep(lambda p: p["a"], {"a": np.array([2**40, 3])})
        # In range: converted as before.
        train = sj.SpikeTrain(np.array([1.0, np.inf]), np.array([0, 7], np.int64))
        assert train.sources.dtype == jnp.int32
        np.testing.assert_array_equal(train.sources, [0, 7])


@pytest.mark.parametrize(
    "make", [sj.ArctanSurrogate, sj.SigmoidSurrogate, sj.FastSigmoidSurrogate]
)
def test_surrogate_slopes(make):
    # NumPy numbers are numbers (stored as a Python float, a static field).
    assert make(slope=np.float32(2.0)).slope == 2.0
    assert type(make(slope=np.int64(3)).slope) is float
    with pytest.raises(TypeError, match=r"`slope` of .* positive number, got True"):
        make(slope=True)
    with pytest.raises(ValueError, match=r"`slope` of .* positive number, got -1.0"):
        make(slope=-1.0)


def test_online_layer_needs_a_layer():
    with pytest.raises(TypeError, match=r"`layer` must be a SpikingODELayer, got str"):
        sj.OnlineLayer("layer")


# -- non-finite inputs -------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("entry", ["forward", "simulate", "step", "online"])
def test_nonfinite_inputs_eager(layer, entry, bad):
    """Named with the first bad entry: `step` names its `x` (it named `inputs`,
    with a shape (1, n_inputs) that read as a position); so does `OnlineLayer`'s
    (it named nothing)."""
    x = np.ones((T, N_IN))
    x[0, 1] = bad
    x[0, 2] = bad
    one = entry in ("step", "online")
    at = r"x\[1\] \(shape \(3,\)" if one else r"inputs\[0, 1\] \(shape"
    name = "x" if one else "inputs"
    match = rf"`{name}` must be finite, got {bad} at {at}.*2 entries NaN or inf"
    with pytest.raises(ValueError, match=match):
        _calls(layer)[entry](x, 1.0)


_filter_jit_forward = eqx.filter_jit(lambda lyr, x: lyr.forward(x, 1.0))
_filter_jit_result = eqx.filter_jit(
    lambda lyr, x, dt: lyr.simulate(x, dt, max_spikes=8, throw=False).result
)


def test_nonfinite_inputs_traced(layer):
    x = jnp.ones((T, N_IN)).at[1, 2].set(jnp.nan)
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or inf"):
        jax.block_until_ready(_filter_jit_forward(layer, x))
    # Under plain jax.jit the same check fires (equinox can only wrap it less nicely).
    with pytest.raises(Exception, match="NaN or inf"):
        jax.block_until_ready(jax.jit(lambda x: layer.forward(x, 1.0))(x))
    assert _filter_jit_result(layer, x, 1.0) == sj.RESULTS.nonfinite_input
    assert _filter_jit_result(layer, x.at[1, 2].set(jnp.inf), 1.0) == (
        sj.RESULTS.nonfinite_input
    )
    # Batched: the run with a NaN is flagged.
    xs = jnp.stack([jnp.ones((T, N_IN)), x])
    results = jax.vmap(lambda x: layer.simulate(x, 1.0, 8, throw=False).result)(xs)
    np.testing.assert_array_equal(
        np.asarray(results == sj.RESULTS.nonfinite_input), [False, True]
    )
    np.testing.assert_array_equal(
        np.asarray(results == sj.RESULTS.successful), [True, False]
    )


def test_nonfinite_inputs_online(layer):
    # A JAX array: named by its entry too (the step, compiled, said "NaN or inf").
    online = sj.OnlineLayer(layer)
    with pytest.raises(ValueError, match=r"`x` must be finite, got nan at x\[1\]"):
        jax.block_until_ready(online.step(jnp.array([1.0, jnp.nan, 0.0])))


_LIF_PARAMS = ["tau_mem", "v_rest", "v_threshold", "v_reset", "C_mem"]


@jax.jit
def _result_with_params(layer, params):
    # The parameters are traced: replaced inside jit, so no eager check sees them.
    dyn = eqx.tree_at(
        lambda d: [getattr(d, k) for k in _LIF_PARAMS],
        layer.dynamics,
        [params[k] for k in _LIF_PARAMS],
    )
    lyr = eqx.tree_at(lambda lyr: lyr.dynamics, layer, dyn)
    return lyr.simulate(jnp.ones((T, N_IN)), 1.0, max_spikes=8, throw=False).result


@pytest.mark.parametrize("name", _LIF_PARAMS)
def test_nonfinite_parameter_traced(layer, name):
    params = {k: jnp.asarray(getattr(layer.dynamics, k)) for k in _LIF_PARAMS}
    assert _result_with_params(layer, params) == sj.RESULTS.successful
    params[name] = jnp.asarray(np.nan)
    assert _result_with_params(layer, params) == sj.RESULTS.nonfinite_input
    # The layer passed through jit as an argument.
    x = jnp.ones((T, N_IN))
    bad = eqx.tree_at(
        lambda lyr: getattr(lyr.dynamics, name), layer, jnp.asarray(np.inf)
    )
    assert _filter_jit_result(bad, x, 1.0) == sj.RESULTS.nonfinite_input
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or inf"):
        jax.block_until_ready(_filter_jit_forward(bad, x))


@pytest.mark.parametrize("steps", [1, 8])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_weight_traced(layer, steps, value):
    # One interval has fewer currents than weights (4 x 1 against 4 x 3: the
    # currents are checked, the weight only once one is not finite); eight have
    # more (the weight is checked directly). A zero input still reports the weight.
    bad = eqx.tree_at(lambda lyr: lyr.weight, layer, layer.weight.at[0, 0].set(value))
    for x in (jnp.ones((steps, N_IN)), jnp.zeros((steps, N_IN))):
        assert _filter_jit_result(bad, x, 1.0) == sj.RESULTS.nonfinite_input
        # (The finite layer over eight intervals of ones may fill its buffer.)
        good = _filter_jit_result(layer, x, 1.0)
        assert good != sj.RESULTS.nonfinite_input
        assert good != sj.RESULTS.nonfinite_current
    # Under vmap, per batch element: only the run with the bad weight reports it.
    weights = jnp.stack([layer.weight, bad.weight])

    def result(w):
        lyr = eqx.tree_at(lambda m: m.weight, layer, w)
        return lyr.simulate(jnp.ones((steps, N_IN)), 1.0, 8, throw=False).result

    results = jax.vmap(result)(weights)
    np.testing.assert_array_equal(
        np.asarray(results == sj.RESULTS.nonfinite_input), [False, True]
    )


# -- invalid traced parameters --------------------------------------------------------


@pytest.mark.parametrize(
    "name, value, condition",
    [
        ("tau_mem", -20.0, "tau_mem > 0"),
        ("tau_mem", 0.0, "tau_mem > 0"),
        ("C_mem", -1.0, "C_mem > 0"),
        ("v_reset", 1.0, "v_reset < v_threshold"),  # == v_threshold
        # below v_reset = 0 and below rest: either condition may be named first
        ("v_threshold", -0.5, "(v_reset|initial v) < v_threshold"),
    ],
)
def test_invalid_parameter_traced(layer, name, value, condition):
    x = jnp.ones((T, N_IN))
    bad = eqx.tree_at(
        lambda lyr: getattr(lyr.dynamics, name), layer, jnp.asarray(value)
    )
    assert _filter_jit_result(bad, x, 1.0) == sj.RESULTS.invalid_parameters
    # The error names the model and the condition that failed, and only that one.
    message = (
        f"Invalid parameters or initial state of ODELIFDynamics .*: need {condition}\\."
    )
    with pytest.raises(eqx.EquinoxRuntimeError, match=message):
        jax.block_until_ready(_filter_jit_forward(bad, x))


def test_invalid_parameter_in_part_of_a_batch(layer):
    # Under vmap, one sample with an invalid traced parameter and one valid sample:
    # the error still names the failed condition (not the valid sample's result).
    x = jnp.ones((T, N_IN))

    def run(tau):
        lyr = eqx.tree_at(lambda lyr: lyr.dynamics.tau_mem, layer, tau)
        return lyr.simulate(x, 1.0, max_spikes=8)

    for taus in ([-1.0, 20.0], [20.0, -1.0]):
        with pytest.raises(
            eqx.EquinoxRuntimeError,
            match="Invalid parameters or initial state of ODELIFDynamics .*: "
            "need tau_mem > 0\\.",
        ):
            jax.block_until_ready(eqx.filter_jit(jax.vmap(run))(jnp.asarray(taus)))


def test_a_success_prints_as_one(layer):
    result = layer.simulate(jnp.zeros((T, N_IN)), 1.0).result
    assert result == sj.RESULTS.successful
    assert "succeeded" in str(result), str(result)


def test_invalid_interval_and_state_traced(layer):
    x = jnp.ones((T, N_IN))
    # (A Python float would be static under filter_jit and checked eagerly.)
    for dt in [-1.0, 0.0, np.inf, np.nan]:
        result = _filter_jit_result(layer, x, jnp.asarray(dt))
        assert result == sj.RESULTS.invalid_parameters, dt
    assert _filter_jit_result(layer, x, jnp.asarray(1.0)) == sj.RESULTS.successful
    # Through OnlineLayer (its step is compiled, so the interval is traced there only
    # after the eager check): a start voltage at threshold is invalid.
    online = sj.OnlineLayer(layer)
    online.reset(sj.LIFState(jnp.ones(N)))
    with pytest.raises(eqx.EquinoxRuntimeError, match="need initial v < v_threshold"):
        jax.block_until_ready(online.step(jnp.ones(N_IN)))


def test_initial_voltage_at_or_above_threshold(layer):
    # A resting potential above threshold is a tonically firing neuron (it starts at
    # v_reset, see test_reliability.py); an explicit initial state at or above
    # threshold is invalid when run.
    x = np.ones((T, N_IN))
    state = sj.LIFState(jnp.full((N,), 1.0))
    with pytest.raises(eqx.EquinoxRuntimeError, match="need initial v < v_threshold"):
        jax.block_until_ready(layer.forward(x, 1.0, state=state))
    sol = layer.simulate(x, 1.0, max_spikes=8, state=state, throw=False)
    assert sol.result == sj.RESULTS.invalid_parameters


def test_nan_takes_precedence_over_invalid(layer):
    bad = eqx.tree_at(lambda lyr: lyr.dynamics.tau_mem, layer, jnp.asarray(-1.0))
    x = jnp.ones((T, N_IN)).at[0, 0].set(jnp.nan)
    assert _filter_jit_result(bad, x, 1.0) == sj.RESULTS.nonfinite_input


# -- step budget ----------------------------------------------------------------------


def test_max_steps_closed_form():
    x = _strong_inputs()
    ref = reference_for(_layer(), x, 1.0)
    most = int(ref.counts.max())  # spikes of the busiest (neuron, interval)
    assert most >= 5
    # The closed-form path takes one step per spike plus one per interval.
    enough = _layer(max_steps=most + 1)
    sol = enough.simulate(x, 1.0, max_spikes=256)
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    short = _layer(max_steps=most)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`max_steps`"):
        jax.block_until_ready(short.forward(x, 1.0))
    with pytest.raises(eqx.EquinoxRuntimeError, match="step budget ran out"):
        jax.block_until_ready(short.simulate(x, 1.0, max_spikes=256))
    sol = short.simulate(x, 1.0, max_spikes=256, throw=False)
    assert sol.result == sj.RESULTS.max_steps_reached
    assert int(sol.stats["max_steps"]) == most


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 6])
def test_max_steps_closed_form_small_budgets(budget):
    # Budgets within the spikes the walk takes before its loop (the first few of an
    # interval): a neuron stops after `budget - 1` spikes in the first interval,
    # and the run says the budget ran out.
    x = _strong_inputs()
    ref = reference_for(_layer(), x, 1.0)
    assert ref.counts[0].max() >= budget
    sol = _layer(max_steps=budget).simulate(x, 1.0, max_spikes=256, throw=False)
    expected = np.minimum(ref.counts[0], budget - 1)
    np.testing.assert_array_equal(np.asarray(sol.counts)[0], expected)
    assert sol.result == sj.RESULTS.max_steps_reached


@pytest.mark.parametrize("later", ["quiet", "in pieces"])
@pytest.mark.parametrize("budget", [3, 6])
def test_budget_run_out_early_is_reported_after_quiet_intervals(budget, later):
    # The budget runs out in the first interval only; the later intervals have no
    # spike. Quiet, the walk takes no loop there; far longer than the model's
    # time scale, it walks them in pieces, in a loop. Either way the run still
    # says the budget ran out, whether it records spike times or not, and under
    # `vmap` only for the sample where it did.
    x = np.zeros((T, N_IN))
    x[0] = _strong_inputs()[0]
    ref = reference_for(_layer(), x, 1.0)
    assert ref.counts[0].max() >= budget and ref.counts[1:].max() == 0
    interval = 1.0
    if later == "in pieces":
        span = float(_layer().dynamics.max_event_span())
        interval = jnp.asarray([1.0] + [3.5 * span] * (T - 1))
    layer = _layer(max_steps=budget)
    sol = layer.simulate(x, interval, max_spikes=256, throw=False)
    counts = np.asarray(sol.counts)
    np.testing.assert_array_equal(counts[0], np.minimum(ref.counts[0], budget - 1))
    assert counts[1:].max() == 0
    assert sol.result == sj.RESULTS.max_steps_reached
    with pytest.raises(eqx.EquinoxRuntimeError, match="`max_steps`"):
        jax.block_until_ready(layer.forward(x, interval))
    batch = jnp.asarray(np.stack([x, np.zeros_like(x)]))
    run = lambda xb: layer.simulate(xb, interval, throw=False).result
    assert jax.vmap(run)(batch)._value.tolist() == [
        int(sj.RESULTS.max_steps_reached._value),
        int(sj.RESULTS.successful._value),
    ]


@pytest.mark.parametrize(
    "solver",
    [sj.Dopri5(), sj.ExactFlow()],
    ids=["dopri5", "bisect"],
)
def test_max_steps_adaptive(solver):
    x = _strong_inputs()
    layer = _layer(solver=solver, max_steps=3)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`max_steps`"):
        jax.block_until_ready(layer.forward(x, 1.0))
    sol = layer.simulate(x, 1.0, max_spikes=8, throw=False)
    assert sol.result == sj.RESULTS.max_steps_reached
    assert np.all(
        np.asarray(sol.stats["num_steps"] + sol.stats["num_rejected_steps"]) <= 3 * T
    )


def test_crossing_search_budget():
    x = _strong_inputs()
    layer = _layer(solver=sj.ExactFlow(), max_root_iters=2)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`max_root_iters`"):
        jax.block_until_ready(layer.forward(x, 1.0))
    sol = layer.simulate(x, 1.0, max_spikes=8, throw=False)
    assert sol.result == sj.RESULTS.crossing_search_failed


# -- spike buffer -------------------------------------------------------------------


@pytest.mark.parametrize("max_spikes", [0, 5])
def test_spike_buffer_full(layer, max_spikes):
    x = _strong_inputs()
    ref = reference_for(layer, x, 1.0)
    assert ref.counts.sum(axis=0).max() > max_spikes
    with pytest.raises(eqx.EquinoxRuntimeError, match="`max_spikes`"):
        jax.block_until_ready(layer.simulate(x, 1.0, max_spikes=max_spikes))
    sol = layer.simulate(x, 1.0, max_spikes=max_spikes, throw=False)
    assert sol.result == sj.RESULTS.spike_buffer_full
    # Counts stay exact, and the buffer holds the first spikes.
    np.testing.assert_array_equal(np.asarray(sol.counts), ref.counts)
    np.testing.assert_array_equal(np.asarray(sol.num_spikes), ref.counts.sum(axis=0))
    assert sol.spike_times.shape == (N, max_spikes)
    assert_padded_times_close(sol.spike_times, ref.padded_times(max_spikes), 1e-9)
    np.testing.assert_allclose(sol.final_state.v, ref.final_v, rtol=0, atol=1e-9)
    # forward needs no buffer.
    np.testing.assert_array_equal(np.asarray(layer.forward(x, 1.0)), ref.counts)


def test_spike_buffer_exactly_full_is_fine(layer):
    x = _strong_inputs()
    ref = reference_for(layer, x, 1.0)
    most = int(ref.counts.sum(axis=0).max())
    sol = layer.simulate(x, 1.0, max_spikes=most)
    assert sol.result == sj.RESULTS.successful
    assert_padded_times_close(sol.spike_times, ref.padded_times(most), 1e-9)


def test_checked_run_leaves_outputs_bitwise_unchanged():
    # A successful run with `throw=True` returns exactly what `throw=False` returns,
    # bit for bit. Neuron 0 is refractory for the whole run, so its voltage is held
    # at its initial value exactly: -0.0, sign bit included.
    layer = sj.SpikingODELayer(
        N_IN, 2, sj.ODELIFDynamics(t_ref=0.05), key=_KEY, dtype=jnp.float64
    )
    state = sj.LIFState(jnp.asarray([-0.0, 0.5]), jnp.asarray([5.0, 0.0]))
    x = jnp.ones((2, N_IN))
    checked = layer.simulate(x, 1.0, max_spikes=8, state=state)
    unchecked = layer.simulate(x, 1.0, max_spikes=8, state=state, throw=False)
    assert unchecked.result == sj.RESULTS.successful
    assert np.signbit(np.asarray(unchecked.final_state.v)[0])
    assert np.signbit(np.asarray(checked.final_state.v)[0])
    leaves_c, leaves_u = jax.tree.leaves(checked), jax.tree.leaves(unchecked)
    assert len(leaves_c) == len(leaves_u)
    for a, b in zip(leaves_c, leaves_u):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_integrate_and_integrate_events_check_their_arrays_shapes():
    """The functions under the layers name the argument whose shape does not fit
    (a state of one neuron was broadcast to all of them without a word; other
    mismatches failed inside a product or an index)."""
    dyn = sj.ODELIFDynamics()
    w = jnp.full((2, 3), 0.6)
    s0 = dyn.init_state(2, jnp.float64)
    one = dyn.init_state(1, jnp.float64)
    x0 = jnp.ones((2, 3))
    ctrl = sj.PredictiveController(rtol=1e-6, atol=1e-8)

    def dense(weight=w, x=x0, state=s0, max_spikes=None):
        return sj.integrate(
            dyn, sj.Exact(), weight, x, 1.0, state, stepsize_controller=ctrl,
            max_spikes=max_spikes,
        )  # fmt: skip

    train = sj.SpikeTrain(jnp.array([1.0, 2.0]), jnp.array([0, 1]))
    per_neuron = r"`state` must hold one value per neuron \(2, the rows of `weight`\)"
    with pytest.raises(ValueError, match=per_neuron + r".*`state.v` of shape \(1,\)"):
        dense(state=one)
    with pytest.raises(ValueError, match=r"`inputs` must have shape \(T, n_inputs\)"):
        dense(x=jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"`weight` must have shape \(n_neurons"):
        dense(weight=jnp.ones(3))
    with pytest.raises(ValueError, match="`max_spikes` must be an int >= 0, got -1"):
        dense(max_spikes=-1)
    np.testing.assert_array_equal(dense().counts.shape, (2, 2))
    # A 0-d integer array is an int (as SpikingODENetwork takes it).
    for m in (np.array(4), jnp.int32(4)):
        np.testing.assert_array_equal(
            dense(max_spikes=m).spike_times, dense(max_spikes=4).spike_times
        )

    def events(state=s0, **kwargs):
        return sj.integrate_events(dyn, w, state, **kwargs)

    with pytest.raises(ValueError, match=per_neuron):
        events(one, spikes=train, t_end=10.0)
    with pytest.raises(
        ValueError, match=r"`recurrent_weight` must have shape .*\(2, 2\)"
    ):
        events(spikes=train, t_end=10.0, recurrent_weight=jnp.ones((3, 3)), delay=0.5)
    with pytest.raises(ValueError, match="need at least one interval"):
        events(inputs=jnp.ones((0, 3)), interval=1.0)
    with pytest.raises(TypeError, match="`t_end` must be a real number"):
        events(spikes=train)
    wide = sj.SpikeTrain(jnp.ones((2, 2)), jnp.zeros((2, 2), jnp.int32))
    with pytest.raises(ValueError, match="`spikes` must be one SpikeTrain with 1-D"):
        events(spikes=wide, t_end=10.0)
    assert events(spikes=train, t_end=10.0).result == sj.RESULTS.successful


def test_integrate_and_integrate_events_raise_by_default():
    """As the layers do: a failed run raises unless `throw=False` (they returned
    it, a full buffer's spike times cut short, as a success to a caller that did
    not read `result`)."""
    dyn = sj.ODELIFDynamics(tau_mem=20.0)
    w = jnp.full((2, 1), 2.0)  # v_inf = 40: many spikes per interval
    s0 = dyn.init_state(2, jnp.float64)
    ctrl = sj.PredictiveController(rtol=1e-6, atol=1e-8)
    x = jnp.ones((3, 1))
    train = sj.SpikeTrain(jnp.array([1.0, 2.0, 3.0]), jnp.array([0, 0, 0]))
    w_jump = jnp.full((2, 1), 1.5)  # each input spike fires both neurons

    def dense(max_spikes=2, **kwargs):
        return sj.integrate(
            dyn, sj.Exact(), w, x, 10.0, s0, stepsize_controller=ctrl,
            max_spikes=max_spikes, **kwargs,
        )  # fmt: skip

    def events(max_spikes=2, **kwargs):
        return sj.integrate_events(
            dyn, w_jump, s0, spikes=train, t_end=10.0, max_spikes=max_spikes, **kwargs
        )

    for run in (dense, events):
        with pytest.raises(eqx.EquinoxRuntimeError, match="Increase `max_spikes`"):
            jax.block_until_ready(run())
        assert run(throw=False).result == sj.RESULTS.spike_buffer_full
        assert run(throw=False, max_spikes=128).result == sj.RESULTS.successful


def test_a_sequence_is_refused_by_its_first_entry_that_is_not_a_number():
    # A bool (read as 1 ms), a string or None inside a list is shown by value,
    # not as "other values".
    layer = _layer()
    x = np.ones((T, N_IN))
    for entry in (True, "2", None):
        with pytest.raises(
            TypeError, match=rf"a list holding {re.escape(repr(entry))}"
        ):
            layer.simulate(x, 1.0, save_times=[0.5, entry])
    # Also in nested lists of other lengths (NumPy failed on them first).
    for ragged, entry in (([0.5, [1.0, True]], "True"), ([0.5, "x", [1.0]], "'x'")):
        with pytest.raises(TypeError, match=f"a list holding {entry}"):
            layer.simulate(x, 1.0, save_times=ragged)
    with pytest.raises(TypeError, match=r"`interval` .* a list holding False"):
        layer.simulate(x, [False, 2.0, 1.0])
