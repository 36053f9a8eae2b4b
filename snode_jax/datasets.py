"""Small benchmark datasets, generated in NumPy.

`yin_yang` reproduces the Yin-Yang dataset (Kriener, Göltz & Petrovici, "The
Yin-Yang dataset", NICE 2022, https://doi.org/10.1145/3517343.3517380; reference
generator at https://github.com/lkriener/yin_yang_data_set) sample for sample, so
results are comparable with the published ones. `yin_yang_spikes` encodes its
features as input spike times (a latency code) for event-driven networks.
"""

import math
import types
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from ._checks import (
    check_float_dtype,
    check_positive_int,
    check_real_number,
    describe,
    narrowed,
)
from ._misc import is_concrete
from ._spike_train import SpikeTrain

__all__ = ["YIN_YANG_CLASS_NAMES", "YIN_YANG_SPLITS", "yin_yang", "yin_yang_spikes"]

YIN_YANG_SPLITS: Mapping[str, tuple[int, int]] = types.MappingProxyType(
    {"train": (5000, 42), "validation": (1000, 41), "test": (1000, 40)}
)
"""The published splits, `name -> (size, seed)`."""

YIN_YANG_CLASS_NAMES: tuple[str, str, str] = ("yin", "yang", "dot")
"""Names of the labels 0, 1, 2, in the order of the reference generator."""

_UINT32_LIMIT = 2**32  # `np.random.RandomState` takes seeds in [0, 2**32)

# The radii `yin_yang` takes: squared distances stay normal and finite float64
# numbers, and a draw lands in a dot often enough (about 6,400 draws per dot
# sample at the smallest ratio; 16 at the default 0.1 / 0.5).
_MIN_RADIUS = 1e-150
_MAX_RADIUS = 1e150
_DOT_DIVISOR = 100


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(
            f"`seed` must be an int in [0, 2**32), got {seed!r}; the published "
            "splits use 42 (train), 41 (validation) and 40 (test)."
        )
    if not 0 <= seed < _UINT32_LIMIT:
        raise ValueError(f"`seed` must be an int in [0, 2**32), got {seed!r}.")
    return int(seed)


def _check_radii(r_small, r_big) -> tuple[float, float]:
    for name, value in (("r_small", r_small), ("r_big", r_big)):
        if isinstance(value, bool) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"`{name}` must be a positive number, got {value!r}.")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    r_small, r_big = float(r_small), float(r_big)
    if not r_small < 0.5 * r_big:
        # A larger dot swallows the inner half-disc of its half; the rejection
        # sampler would then hunt for a class that may have no area left.
        raise ValueError(
            f"`r_small` must be below `r_big` / 2 (each dot inside its half of the "
            f"symbol), got r_small={r_small!r} with r_big={r_big!r}."
        )
    if not _MIN_RADIUS <= r_small < r_big <= _MAX_RADIUS:
        # (Squared distances underflow or overflow in float64 beyond these: every
        # point would get one label, and the sampler would wait for the others.)
        raise ValueError(
            f"`r_small` and `r_big` must lie in [{_MIN_RADIUS:g}, {_MAX_RADIUS:g}], "
            f"got r_small={r_small!r} with r_big={r_big!r}."
        )
    if r_small < r_big / _DOT_DIVISOR:  # (as documented: at least r_big / 100)
        # A dot sample waits for a draw in a dot: a fraction (pi / 2)(r_small /
        # r_big)^2 of the square's draws.
        draws = 2 / (math.pi * (r_small / r_big) ** 2)
        raise ValueError(
            f"`r_small` must be at least r_big / {_DOT_DIVISOR} (each dot "
            f"sample is drawn until a point lands in a dot: about {draws:.2g} draws "
            f"per dot sample here), got r_small={r_small!r} with r_big={r_big!r}."
        )
    return r_small, r_big


def _label(x: float, y: float, r_small: float, r_big: float) -> int:
    """The class of a point of the big disc, with the reference rule's comparisons
    (including its `<=` / `<` at the borders)."""
    # The two dot centres sit on the horizontal diameter, a quarter of it in from
    # either side; each is also the centre of a half-disc of radius r_big / 2.
    # `** 2` (libm `pow`, as the reference's NumPy scalars use) rather than `d * d`:
    # the two can differ in the last bit, which could move a point on a border.
    to_right = math.sqrt((x - 1.5 * r_big) ** 2 + (y - r_big) ** 2)
    to_left = math.sqrt((x - 0.5 * r_big) ** 2 + (y - r_big) ** 2)
    if to_right < r_small or to_left < r_small:
        return 2
    in_left_half_disc = r_small < to_left <= 0.5 * r_big
    upper_outside_right_half_disc = y > r_big and to_right > 0.5 * r_big
    return int(
        to_right <= r_small or in_left_half_disc or upper_outside_right_half_disc
    )


def yin_yang(
    size: int | None = None,
    seed: int | None = None,
    *,
    split: str | None = None,
    r_small: float = 0.1,
    r_big: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The Yin-Yang dataset, identical to the reference generator's output.

    Either name a published split,

        features, labels = yin_yang(split="train")  # 5000 samples, seed 42

    (`"train"`: 5000 samples, seed 42; `"validation"`: 1000, seed 41; `"test"`:
    1000, seed 40, as in `YIN_YANG_SPLITS`), or pass `size` and `seed` for a set of
    your own. A given `(size, seed, r_small, r_big)` always gives the same set, and
    the same set as the reference `YinYangDataset(r_small, r_big, size, seed)`;
    sets with the same seed share their first samples, so use distinct seeds for
    sets meant to be disjoint.

    **Generation.** Points are drawn uniformly in the square `[0, 2 r_big]^2` and
    kept only inside the big disc (centre `(r_big, r_big)`, radius `r_big`). For
    balanced classes, each sample first draws its target class uniformly from
    {0, 1, 2}, then draws points until one of that class turns up. Everything
    comes from one `np.random.RandomState(seed)`, called in the reference order
    (`randint(3)` per sample, then `rand(2)` per candidate point), so the
    reference sequence is reproduced exactly; the global NumPy random state is
    neither used nor changed.

    **Classes.** With the dot centres `L = (r_big / 2, r_big)` and
    `R = (3 r_big / 2, r_big)`: label 2 (`"dot"`) within `r_small` of `L` or `R`;
    label 1 (`"yang"`) the rest of the disc of radius `r_big / 2` around `L`, plus
    the upper half of the big disc (`y > r_big`) outside the disc of radius
    `r_big / 2` around `R`; label 0 (`"yin"`) everything else in the big disc.
    The names follow the reference's `class_names` order (`YIN_YANG_CLASS_NAMES`).

    **Features.** `(x, y, 1 - x, 1 - y)`, the reference order (the mirrored pair
    helps neuron models without an intrinsic bias). With
    the default `r_big = 0.5` all four lie in `[0, 1]`; the mirror is `1 - x` for
    any `r_big`, as in the reference. No constant bias input is included (the
    reference set has these 4 features); add one in your input encoding if the
    network needs it.

    **Arguments:**

    - `size`: number of samples, a positive int (with `seed`; not with `split`).
    - `seed`: seed of the `RandomState`, an int in `[0, 2**32)` (with `size`).
    - `split`: `"train"`, `"validation"` or `"test"`, for the published size and
      seed.
    - `r_small`: radius of the dots, below `r_big / 2` and at least `r_big / 100`
      (smaller dots take too many draws to hit).
    - `r_big`: radius of the whole symbol. Both radii lie in `[1e-150, 1e150]`.

    **Returns:** `(features, labels)`: float64 array of shape `(size, 4)` and int64
    array of shape `(size,)` with values in {0, 1, 2}.
    """
    if split is not None:
        if size is not None or seed is not None:
            raise ValueError(
                f"`split` fixes the size and seed; pass either `split` or `size` "
                f"and `seed`, got split={split!r} with size={size!r}, seed={seed!r}."
            )
        if not isinstance(split, str) or split not in YIN_YANG_SPLITS:
            allowed = ", ".join(repr(name) for name in YIN_YANG_SPLITS)
            raise ValueError(f"`split` must be one of {allowed}, got {split!r}.")
        size, seed = YIN_YANG_SPLITS[split]
    elif size is None or seed is None:
        raise ValueError(
            "pass `split` ('train', 'validation' or 'test') or both `size` and "
            f"`seed`, got size={size!r}, seed={seed!r}."
        )
    size = check_positive_int("size", size)
    seed = _check_seed(seed)
    r_small, r_big = _check_radii(r_small, r_big)

    rng = np.random.RandomState(seed)
    features = np.empty((size, 4), dtype=np.float64)
    labels = np.empty(size, dtype=np.int64)
    for i in range(size):
        target = int(rng.randint(3))
        while True:
            # Same arithmetic as the reference: (u * 2) * r_big, elementwise.
            x, y = (rng.rand(2) * 2.0 * r_big).tolist()
            if math.sqrt((x - r_big) ** 2 + (y - r_big) ** 2) > r_big:
                continue
            label = _label(x, y, r_small, r_big)
            if label == target:
                break
        features[i] = (x, y, 1.0 - x, 1.0 - y)
        labels[i] = label
    return features, labels


def _check_time(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"`{name}` must be a number (ms), got {value!r}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite time >= 0 (ms), got {value!r}.")
    return float(value)


def yin_yang_spikes(
    features,
    *,
    t_early: float = 10.0,
    t_late: float = 40.0,
    t_bias: float = 20.0,
    dtype=None,
) -> SpikeTrain:
    """Encode Yin-Yang features as input spike times: one spike per feature, plus
    one bias spike.

    Feature `j` (a value `x` in `[0, 1]`) becomes one spike of input `j` at

        t = t_early + x * (t_late - t_early)

    (small values spike early: a latency code), and input 4 spikes once at the
    fixed time `t_bias`, the network's time reference. This is the encoding of the
    Yin-Yang experiments of Göltz et al., "Fast and energy-efficient neuromorphic
    deep learning with first-spike times" (Nature Machine Intelligence 3, 2021),
    and of Wunderlich & Pehle, "Event-based backpropagation can compute exact
    gradients for spiking neural networks" (Scientific Reports 11, 12829, 2021;
    their Fig. 3D).

    **Default constants** (ms): `t_early = 10`, `t_late = 40`, `t_bias = 20`, the
    values of the Yin-Yang example of the `eventprop` reference package
    (https://github.com/eventprop/eventprop, `YinYangTTFS`: `t_min = 10e-3`,
    `t_max = 40e-3`, `t_bias = 20e-3` s) for current-based LIF neurons with
    `tau_mem = 20 ms` and `tau_syn = 5 ms`, as `sj.CubaLIFDynamics()`. Göltz et
    al. use the same scheme in units of their synaptic time constant; pass your
    own constants to match another time scale.

    **Arguments:**

    - `features`: array of shape `(..., 4)` with values in `[0, 1]`, as returned
        by [`yin_yang`][] (`(x, y, 1 - x, 1 - y)`).
    - `t_early`: the time of a feature equal to 0 (ms, `>= 0`).
    - `t_late`: the time of a feature equal to 1 (ms, `> t_early`).
    - `t_bias`: the time of the bias spike (ms, `>= 0`).
    - `dtype`: floating dtype of the times; default JAX's default float.

    **Returns:** a [`SpikeTrain`][] with `times` of shape `(..., 5)` (columns: the
    four features, then the bias) and `sources` `0, 1, 2, 3, 4` broadcast to the
    same shape; a batch of trains for `jax.vmap` when `features` is 2-D.

    **Raises:** `ValueError` for a last axis other than 4, features outside
    `[0, 1]` or not finite (for concrete values), negative or non-finite times,
    times beyond the range of `dtype`, `t_late <= t_early`, or a `dtype` that
    is not a floating dtype JAX runs (float64 without 64-bit types enabled);
    `TypeError` for times that are not numbers, or features that are not real
    numbers (complex, bool, strings).
    """
    t_early = _check_time("t_early", t_early)
    t_late = _check_time("t_late", t_late)
    t_bias = _check_time("t_bias", t_bias)
    if not t_late > t_early:
        raise ValueError(
            f"`t_late` must be after `t_early` (an empty window encodes nothing), "
            f"got t_early={t_early!r}, t_late={t_late!r}."
        )
    # (A floating dtype JAX has: float64 without x64 is refused, not run as
    # float32.)
    dtype = check_float_dtype(dtype)
    for name, value in (("t_late", t_late), ("t_bias", t_bias)):
        # (Every time lies in [t_early, t_late], or is t_bias.)
        hint = "its spikes would become +inf, the padding"
        narrowed(f"`{name}` (ms)", np.asarray(value), dtype, hint)
    if not np.asarray(t_late, dtype) > np.asarray(t_early, dtype):
        # (Every feature would get one time.)
        raise ValueError(
            f"`t_late` must be after `t_early` in {np.dtype(dtype).name}, where "
            f"they round to one time, got t_early={t_early!r}, t_late={t_late!r}."
        )
    # (Not bools, strings or objects: `True` would be a feature of 1.)
    check_real_number("features", features, unit="")
    given = features
    features = jnp.asarray(features, dtype)
    if features.ndim < 1 or features.shape[-1] != 4:
        raise ValueError(
            "`features` must have shape (..., 4) (x, y, 1 - x, 1 - y), got shape "
            f"{features.shape}."
        )
    if is_concrete(features):
        # (The values given, not those rounded to `dtype`, are shown.)
        f = np.asarray(given)
        bad = ~((f >= 0) & (f <= 1))  # NaN is bad too
        if np.any(bad):
            raise ValueError(
                "`features` must lie in [0, 1], got "
                f"{describe(f[bad])} at positions {np.argwhere(bad)[:5].tolist()}."
            )
    feature_times = t_early + features * (t_late - t_early)
    bias = jnp.full(features.shape[:-1] + (1,), t_bias, dtype)
    times = jnp.concatenate([feature_times, bias], axis=-1)
    sources = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), times.shape)
    return SpikeTrain(times, sources)
