"""Argument checks shared by the entry points: each refuses a value by name, with
the value given and what is allowed (`TypeError` for the wrong kind of value,
`ValueError` for a value out of range)."""

import decimal
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ._misc import is_concrete


def describe(x) -> str:
    """A short rendering of a value for an error message."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        return repr(arr.item())
    if arr.size <= 6:
        return repr(arr.tolist())
    return f"array of shape {arr.shape} (min {arr.min()!r}, max {arr.max()!r})"


def _first_entry(name: str, host: np.ndarray, where: np.ndarray):
    """`(value, "name[i, j]", count)` of the first entry of `host` where `where`
    holds, or None where it holds nowhere."""
    bad = np.argwhere(where)
    if not bad.size:
        return None
    at = ", ".join(str(int(i)) for i in bad[0])
    return host[tuple(bad[0])], f"{name}[{at}]", len(bad)


def check_bool(name: str, value) -> bool:
    """`value` as a Python bool; `TypeError` unless it is a Python or NumPy bool (a
    flag such as `throw`, where `None`, `0` or a string would have read as true or
    false)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_finite(name: str, a) -> None:
    """`ValueError` naming the first NaN or inf entry of a concrete array `a`."""
    if is_concrete(a):
        host = np.asarray(a)
        first = _first_entry(name, host, ~np.isfinite(host))
        if first is not None:
            value, at, count = first
            raise ValueError(
                f"`{name}` must be finite, got {value} at {at} (shape "
                f"{tuple(a.shape)}; {count} entries NaN or inf)."
            )


def check_fits(name: str, a, cast) -> None:
    """`ValueError` naming the first finite entry of a concrete array `a` that
    `cast`, `a` cast to a layer's dtype as the run casts it, holds as inf: the run
    would report NaN or inf inputs. (The cast itself, not a prediction of it: NumPy
    and XLA round to float16 and bfloat16 differently near their largest value.)
    Nothing to check, and nothing copied to the host, where the dtypes agree."""
    if not (is_concrete(a) and is_concrete(cast)) or a.dtype == cast.dtype:
        return
    host, out = np.asarray(a), np.asarray(cast)
    first = _first_entry(name, host, np.isfinite(host) & ~np.isfinite(out))
    if first is not None:
        value, at, count = first
        raise ValueError(
            f"`{name}` must fit the layer's dtype {out.dtype.name} (largest "
            f"{float(jnp.finfo(out.dtype).max):.6g}), got {value} at {at} ({count} "
            "entries beyond it; scale the input down, or use a wider dtype)."
        )


def is_number_dtype(dtype) -> bool:
    """Bools, ints and floats (bfloat16 and the float8 types, of NumPy kind "V",
    included); not complex numbers, dates, durations, strings or objects."""
    if jnp.issubdtype(dtype, jnp.floating):
        return True
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:  # (JAX's key types)
        return False


def check_real(name: str, x) -> None:
    """`TypeError` unless `x` (an array, a tracer, or a number) has a real dtype:
    JAX and NumPy would otherwise drop the imaginary part with only a warning."""
    try:
        complex_values = np.iscomplexobj(x)
    except ValueError:  # (nested lists of other lengths: `check_real_number`
        return  # names their entry that is not a number, `check_rectangular` them)
    if complex_values:
        dtype = getattr(x, "dtype", None)
        shown = describe(x) if is_concrete(x) else f"traced, dtype {dtype}"
        raise TypeError(f"`{name}` must be real, got complex values ({shown}).")


def check_rectangular(name: str, x) -> None:
    """`ValueError` naming `x`, a list or tuple, where its nested sequences have
    other lengths (NumPy's own error does not name it)."""
    if isinstance(x, (list, tuple)):
        try:
            np.shape(x)
        except ValueError as e:
            raise ValueError(
                f"`{name}` must be a rectangular array (nested sequences of equal "
                f"lengths), got a {type(x).__name__} that is not ({e})."
            ) from None


def check_real_number(name: str, x, unit: str = " (ms)") -> None:
    """`TypeError` unless `x` is a real number (an int, a float, a NumPy or JAX
    scalar of those, a fraction, a decimal) or an array or sequence of them: a
    bool, a string or a bool array would otherwise be read as a time (`True` as
    1 ms, `"10"` as 10 ms) or fail inside NumPy without naming `x`. `unit` is
    shown in the message."""
    check_real(name, x)
    if _real_number(x):
        check_rectangular(name, x)
        return
    if isinstance(x, (list, tuple)):
        shown = f"a {type(x).__name__} holding {_first_not_real(x)!r}"
    elif isinstance(x, (str, bytes)) or (np.ndim(x) == 0 and is_concrete(x)):
        shown = repr(x)
    elif hasattr(x, "dtype"):
        shown = f"an array of dtype {x.dtype}"
    else:
        shown = f"a {type(x).__name__}"
    raise TypeError(
        f"`{name}` must be a real number{unit}: an int, a float, or an array of "
        f"them; got {shown}."
    )


def _first_not_real(x):
    """The first entry of the (nested) sequence `x` that is not a real number
    (`x` holds one)."""
    e = next(e for e in x if not _real_number(e))
    return _first_not_real(e) if isinstance(e, (list, tuple, range)) else e


def _real_number(x) -> bool:
    if isinstance(x, (bool, np.bool_, str, bytes)):
        return False
    if isinstance(x, (numbers.Real, decimal.Decimal)):
        return True
    if isinstance(x, (list, tuple, range)):
        return all(_real_number(e) for e in x)
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return False
    return bool(
        jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    )


JAX_DTYPE_HINT = "JAX's type for it; enable float64 for 64 bits"


def check_parameters_fit(dynamics, dtype) -> None:
    """`ValueError` naming the parameter of `dynamics` (a float, or a float array,
    with a value now) that `dtype`, a layer's, cannot hold: it would be inf there,
    and the run reported as given NaN or inf. Then the model's own conditions
    (its `__check_init__`) on the parameters as `dtype` holds them, where that
    rounding changed one: a positive time constant of 1e-46 ms is 0 in float32 (a
    subnormal such as 1e-40 is flushed to 0 by XLA), and a reset a hair below
    threshold may round onto it; the run reported the condition failed, naming
    no value."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(dynamics):
        if isinstance(leaf, bool) or not is_concrete(leaf):
            continue
        host = np.asarray(leaf)
        if host.dtype.kind == "f" or isinstance(leaf, int):
            name = f"`dynamics{jax.tree_util.keystr(path)}`"
            narrowed(name, host.astype(np.float64), dtype, "the layer's dtype")
    _check_rounded_conditions(dynamics, dtype)


def _check_rounded_conditions(dynamics, dtype) -> None:
    checks = [
        cls.__dict__["__check_init__"]
        for cls in type(dynamics).__mro__
        if "__check_init__" in cls.__dict__
    ]
    leaves, treedef = jax.tree_util.tree_flatten(dynamics)
    if not checks or not is_concrete(leaves):
        return
    tiny = np.finfo(dtype).tiny
    changed = []

    def rounded(leaf):
        # Only the floats that the dtype changes are replaced, in the type they
        # were given in (a Python float stays one); the rest are left as given.
        if isinstance(leaf, (bool, int)):
            return leaf
        host = np.asarray(leaf)
        if host.dtype.kind != "f":
            return leaf
        with np.errstate(under="ignore"):
            out = host.astype(np.float64).astype(dtype).astype(np.float64)
        # (XLA's CPU and GPU code flushes subnormals to 0.)
        out = np.where(np.abs(out) < tiny, 0.0, out)
        if np.array_equal(out, host):
            return leaf
        changed.append(True)
        if isinstance(leaf, float):
            return float(out)
        if isinstance(leaf, np.ndarray):
            return out.astype(host.dtype)
        return jnp.asarray(out, host.dtype)

    held = jax.tree_util.tree_unflatten(treedef, [rounded(x) for x in leaves])
    if not changed:  # (checked as given, when the model was built)
        return
    try:
        for check in checks:
            check(held)
    except ValueError as e:
        raise ValueError(
            f"{type(dynamics).__name__}'s parameters as the layer's dtype "
            f"{np.dtype(dtype).name} holds them (rounded to it, and values below "
            f"{tiny:.3g} flushed to 0, as XLA does) fail its conditions: {e} Use a "
            "wider dtype, or values it can hold."
        ) from None
    except Exception:
        # (A check that cannot take the rounded values: the run's own checks
        # remain.)
        return


def narrowed(
    subject: str, host: np.ndarray, dtype, hint: str = JAX_DTYPE_HINT
) -> np.ndarray:
    """`host` in `dtype`, with a `ValueError` (naming `subject`) where that changes
    a value: an integer outside the type's range wraps around, a finite float
    beyond it becomes inf (with float64 disabled, JAX's types have 32 bits)."""
    with np.errstate(over="ignore", under="ignore"):  # (found below, and refused)
        out = host.astype(dtype, copy=False)
    kind = host.dtype.kind
    if kind in "iu":
        changed = out.astype(host.dtype) != host
        what = f"integers outside the range of {out.dtype}"
    elif kind in "fc":
        # (Complex: each part, as one may be inf or NaN where the other is not.)
        changed = np.zeros(host.shape, bool)
        for part in (np.real, np.imag) if kind == "c" else (np.asarray,):
            changed |= np.isfinite(part(host)) & ~np.isfinite(part(out))
        what = f"values beyond the range of {out.dtype}"
    else:
        return out
    if np.any(changed):
        raise ValueError(
            f"{subject} holds {what} ({hint}), got {describe(host[changed])}."
        )
    return out


def check_float_dtype(dtype):
    """`dtype` (default: JAX's default float) as a NumPy floating dtype that JAX
    runs in; else `ValueError` naming `dtype` (not a floating dtype, or float64
    while JAX runs it in float32, where the arrays would silently be float32)."""
    if dtype is None or dtype is float or (isinstance(dtype, str) and dtype == "float"):
        dtype = jnp.result_type(float)  # (`float`: JAX's default float)
    try:
        given = np.dtype(dtype)
        runs_in = np.dtype(jax.dtypes.canonicalize_dtype(given))
        floating = bool(jnp.issubdtype(given, jnp.floating))
    except TypeError:  # (not a dtype: "banana", an object)
        given = runs_in = None
        floating = False
    if not floating or given is None or runs_in is None:
        raise ValueError(f"`dtype` must be a floating dtype, got {dtype!r}.")
    if runs_in != given:
        raise ValueError(
            f"`dtype` {given.name} is not available: JAX runs it in {runs_in.name} "
            '(enable float64 with `jax.config.update("jax_enable_x64", True)`).'
        )
    if given.name not in ("float16", "bfloat16", "float32", "float64"):
        # (float128 JAX has no arrays of; float8 types no arithmetic with others.)
        raise ValueError(
            f"`dtype` {given.name} is not one the library computes in: use float16, "
            "bfloat16, float32 or float64."
        )
    return given


def as_jax_array(name: str, x) -> jax.Array:
    """`jnp.asarray(x)`, refusing complex values (`TypeError`) and host values
    that the conversion changes (`ValueError`, see [`narrowed`][])."""
    if not is_concrete(x):  # (a list may hold traced values: JAX converts it)
        x = jnp.asarray(x)
    check_real(name, x)
    check_rectangular(name, x)
    if not isinstance(x, jax.Array) and is_concrete(x):
        host = np.asarray(x)
        if host.dtype == object:  # (an int beyond 64 bits, a fraction: JAX fails)
            raise TypeError(
                f"`{name}` must be ints or floats of at most 64 bits, got "
                f"{describe(host)}."
            )
        # (Strings, bytes, dates: JAX fails.)
        if not is_number_dtype(host.dtype):
            raise TypeError(
                f"`{name}` must be numbers (ints or floats), got dtype {host.dtype} "
                f"({describe(host)})."
            )
        # (Under a trace `jnp.asarray` stages the value: converted here instead.)
        narrowed(f"`{name}`", host, jax.dtypes.canonicalize_dtype(host.dtype))
    return jnp.asarray(x)


# The largest loop budget: loop counters are int32.
MAX_BUDGET = 2**31 - 1


# Why a value is bounded by `MAX_BUDGET`, for the messages.
BUDGET_REASON = "a loop budget, counted in int32"
SIZE_REASON = "neurons and inputs are indexed in int32"


def check_positive_int(
    name: str, value, at_most: int | None = None, why: str = BUDGET_REASON
) -> int:
    """`value` as an int, `> 0` (and `<= at_most` where given, for the reason
    `why`); else `TypeError` or `ValueError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be a positive int, got {value!r}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if at_most is not None and value > at_most:
        raise ValueError(f"`{name}` must be at most {at_most} ({why}), got {value!r}.")
    return int(value)


def is_real_scalar(value) -> bool:
    """Whether `value` is one real number: an int or a float (Python, NumPy, a
    fraction, a decimal) or a 0-d integer or floating array; not a bool, a string
    or a complex number (which `float` would read, or drop the imaginary part of)."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        return True
    dtype = getattr(value, "dtype", None)
    return (
        dtype is not None
        and np.ndim(value) == 0
        and bool(
            jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
        )
    )


def as_static_float(value):
    """`value` as a Python float where it is one concrete real number (a NumPy
    scalar, a 0-d array, a fraction, a decimal), for a setting kept in a static
    field (hashed, compared, and mixed with arrays as a Python number); any other
    value unchanged, for the field's check to refuse by name."""
    if not (is_real_scalar(value) and is_concrete(value)):
        return value
    try:
        fvalue = float(value)
    except (OverflowError, ValueError):  # (beyond a float; a signalling NaN)
        return value
    # (A value that becomes 0 or inf only as a float is left as given: the check
    # refuses it showing what was given.)
    if (fvalue == 0) != (value == 0) or (math.isinf(fvalue) and value != fvalue):
        return value
    return fvalue


def as_static_bound(value):
    """[`as_static_float`][] for an upper bound that may be infinite: a value
    beyond the range of a float is `inf`."""
    if not (is_real_scalar(value) and is_concrete(value)):
        return value
    try:
        return float(value)
    except OverflowError:  # (an int beyond the range of a float)
        return math.inf if value > 0 else -math.inf
    except ValueError:  # (a signalling-NaN decimal: refused by the check)
        return value


def as_static_int(value):
    """`value` as a Python int where it is a NumPy integer scalar (for a static
    field); any other value unchanged, for the field's check."""
    if isinstance(value, np.integer):
        return int(value)
    return value


def as_static_bool(value):
    """`value` as a Python bool where it is a NumPy bool (for a static field)."""
    return bool(value) if isinstance(value, np.bool_) else value


def check_real_float(
    name: str, value, unit: str = "", *, zero: bool = False, infinite: bool = False
) -> float:
    """`value` as a Python float: one real number (see [`is_real_scalar`][]), not
    NaN, `> 0` (`>= 0` with `zero`), finite unless `infinite`; else `TypeError`
    (not a number, or a traced one) or `ValueError`, naming `name` with `unit`."""
    if zero:
        kind = f"a number >= 0{unit}"
        bound = f"{'>= 0' if infinite else 'finite and >= 0'}{unit}"
    else:
        kind = bound = f"a positive number{unit}"
    if not is_real_scalar(value):
        raise TypeError(f"`{name}` must be {kind}, got {value!r}.")
    try:
        fvalue = float(value)
    except OverflowError:  # (an int beyond the range of a float)
        fvalue = math.inf if value > 0 else -math.inf
    except ValueError:  # (a signalling-NaN decimal)
        fvalue = math.nan
    except TypeError:  # (a traced value)
        raise TypeError(
            f"`{name}` must be {kind}, not a traced value; got {value!r}."
        ) from None
    if np.isinf(fvalue) and not infinite and fvalue > 0:
        bound = f"finite and {'>= 0' if zero else '> 0'}{unit}"
    low_ok = fvalue >= 0 if zero else fvalue > 0
    if np.isnan(fvalue) or not low_ok or (np.isinf(fvalue) and not infinite):
        raise ValueError(f"`{name}` must be {bound}, got {value!r}.")
    return fvalue


def check_positive_float(name: str, value, unit: str = "") -> float:
    """`value` as a Python float, finite and `> 0`; else `TypeError` or
    `ValueError` naming `name` (see [`check_real_float`][])."""
    return check_real_float(name, value, unit)


def check_weight_array(name: str, array, shape, sizes: str, dtype=None) -> None:
    """`TypeError` unless `array` (a module's weight, which `eqx.tree_at` may have
    swapped in unchecked) is a real floating array (of `dtype` where given),
    `ValueError` unless it has `shape`, whose axes `sizes` names."""
    found = getattr(array, "dtype", None)
    if found is None or not jnp.issubdtype(found, jnp.floating):
        raise TypeError(
            f"`{name}` must be a real floating array, got "
            f"{type(array).__name__ if found is None else found}."
        )
    canonical = jax.dtypes.canonicalize_dtype
    if dtype is not None and canonical(found) != canonical(dtype):
        raise TypeError(
            f"`{name}` must have the dtype of `weight` ({dtype}), got {found}."
        )
    if jnp.shape(array) != shape:
        raise ValueError(
            f"`{name}` must have shape ({sizes}) = {shape}, got {jnp.shape(array)}."
        )


def beyond(value: float, dtype) -> bool:
    """Whether the finite `value` rounds to infinity in `dtype` (the largest
    finite value and what rounds to it do not)."""
    with np.errstate(over="ignore"):
        return bool(np.isinf(np.asarray(value, np.float64).astype(dtype)))


def check_interval(interval, num_intervals: int | None = None, dtype=None):
    """Validate `interval`: a scalar (ms), or with `num_intervals` given also one
    length per interval. Its values are checked when concrete (with `dtype`, the
    run's, the run's end time must be finite in it); traced values are checked at
    run time by the caller."""
    check_real_number("interval", interval)
    shapes = [()] if num_intervals is None else [(), (num_intervals,)]
    shape = np.shape(interval)
    if shape not in shapes:
        allowed = "a scalar (ms)"
        if num_intervals is not None:
            allowed += f" or one length per interval, shape ({num_intervals},)"
        raise ValueError(f"`interval` must be {allowed}, got shape {shape}.")
    if is_concrete(interval):
        arr = np.asarray(interval)
        if arr.dtype == object:  # (a fraction, an int beyond 64 bits)
            raise TypeError(
                "`interval` must be an int, a float, or an array of them (ms), got "
                f"{interval!r}."
            )
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(
                f"`interval` must be finite and > 0 (ms), got {describe(arr)}."
            )
        if dtype is not None:
            with np.errstate(over="ignore"):  # (an overflow is refused below)
                zero = arr.astype(dtype) == 0
            if np.any(zero):
                shown = describe(arr if arr.ndim == 0 else arr[zero])
                raise ValueError(
                    f"`interval` must be > 0 in the run's dtype "
                    f"{jnp.dtype(dtype).name}, where {shown} rounds to 0 (ms)."
                )
            largest = float(jnp.finfo(dtype).max)
            count = 1 if num_intervals is None or arr.ndim else num_intervals
            end = float(np.sum(arr.astype(np.float64))) * count
            if beyond(end, dtype):
                raise ValueError(
                    f"`interval` must keep the run's end time finite in its dtype "
                    f"{jnp.dtype(dtype).name} (at most {largest!r} ms), got "
                    f"{describe(arr)}, ending at {end!r} ms."
                )
