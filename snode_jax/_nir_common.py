"""What NIR import and export share: the `nir` package, loaded when first needed,
and the node types supported."""

import numpy as np

_SUPPORTED = (
    "Input, Output, Linear, Affine (zero bias), LIF, CubaLIF, IF, LI, CubaLI, I, "
    "and Delay (only in a recurrent loop, one delay for all neurons)"
)
_SPIKING = ("LIF", "CubaLIF", "IF")
_READOUT = ("LI", "CubaLI", "I")
_WEIGHTS = ("Linear", "Affine")


def _nir():
    try:
        import nir
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "snode_jax.nir needs the `nir` package: pip install 'snode_jax[nir]'."
        ) from e
    return nir


def _f64(x) -> np.ndarray:
    if np.iscomplexobj(x):
        raise TypeError(f"NIR parameters must be real, got complex values {x!r}.")
    return np.asarray(x, np.float64)
