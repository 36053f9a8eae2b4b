"""Parameter handling shared by the neuron models."""

import decimal
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import as_jax_array, check_real_number, describe
from ._misc import is_concrete


def as_param(name: str, x):
    """A model parameter as a floating array: a scalar or one value per neuron.
    `TypeError` for what is not real numbers (a bool, a string, `None`), and
    `ValueError` for a value its array type cannot hold (see `as_jax_array`)."""
    check_real_number(name, x, unit="")
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating):
        arr = x
    else:
        if isinstance(x, (numbers.Real, decimal.Decimal)) and not isinstance(
            x, (np.integer, np.floating)
        ):
            try:
                x = float(x)  # (a Python int of any size, a fraction, a decimal)
            except OverflowError:
                raise ValueError(f"`{name}` must be finite, got {x!r}.") from None
        arr = as_jax_array(name, x)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            arr = arr.astype(jnp.result_type(float))
    if arr.ndim > 1:
        raise ValueError(
            f"`{name}` must be a scalar or a 1-D array (one per neuron), got shape "
            f"{arr.shape}."
        )
    return arr


def check_params(module, names, positive=(), units=None) -> bool:
    """Check concrete parameters: finite, and `> 0` for those in `positive`.

    Returns False (nothing checked) when the parameters are traced; the model's
    `invalid` then reports them at run time.
    """
    names = [n for n in names if getattr(module, n) is not None]
    if not is_concrete([getattr(module, n) for n in names]):
        return False
    units = units or {}
    for name in names:
        value = np.asarray(getattr(module, name))
        if not np.all(np.isfinite(value)):
            raise ValueError(f"`{name}` must be finite, got {describe(value)}.")
    for name in positive:
        value = np.asarray(getattr(module, name))
        if np.any(value <= 0):
            unit = f" ({units[name]})" if name in units else ""
            raise ValueError(f"`{name}` must be > 0{unit}, got {describe(value)}.")
    return True


def check_below(module, low: str, high: str) -> None:
    """Raise unless parameter `low` < parameter `high` everywhere (concrete only)."""
    a, b = np.asarray(getattr(module, low)), np.asarray(getattr(module, high))
    if np.any(a >= b):
        raise ValueError(
            f"`{low}` must be < `{high}`, got {low}={describe(a)}, {high}={describe(b)}."
        )
