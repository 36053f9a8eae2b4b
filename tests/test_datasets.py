"""`snode_jax.datasets.yin_yang` against the reference Yin-Yang generator.

How the pinned values were produced: `dataset.py` of the reference repository
https://github.com/lkriener/yin_yang_data_set (commit
121a3805c95e466878988536e3d38853968ceb3b), run unmodified with NumPy 2.4.6 (its
`torch.utils.data.dataset.Dataset` base class replaced by an empty stand-in class,
as the generator uses nothing from it), with the calls from its README:

    YinYangDataset(size=5000, seed=42)  # train
    YinYangDataset(size=1000, seed=41)  # validation
    YinYangDataset(size=1000, seed=40)  # test

Each set's items `ds[i]` were stacked into a float64 `(size, 4)` feature array and
an int64 label array. Pinned: the first three items (floats by `repr`, so to the
last bit), the label counts, and the SHA-256 of the little-endian bytes of both
arrays in C order.
"""

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from snode_jax.datasets import (
    YIN_YANG_CLASS_NAMES,
    YIN_YANG_SPLITS,
    yin_yang,
    yin_yang_spikes,
)

# split -> (first three feature rows, first three labels, counts of labels 0, 1, 2,
#           SHA-256 of the features, SHA-256 of the labels)
REFERENCE = {
    "train": (
        [
            [
                0.6803075385877797,
                0.450499251969543,
                0.3196924614122203,
                0.549500748030457,
            ],
            [
                0.09767211400638387,
                0.6842330265121569,
                0.9023278859936161,
                0.3157669734878431,
            ],
            [
                0.7553614103176525,
                0.4251558744912447,
                0.24463858968234753,
                0.5748441255087553,
            ],
        ],
        [2, 1, 2],
        [1681, 1702, 1617],
        "f5a4054d56f2a058f8250fba7ff9720458e1625db7af78a295e45701745b2228",
        "534d12acda4f9dbc7208a99d3646115a4aa7d74ca31d6d23f822079a568559b7",
    ),
    "validation": (
        [
            [
                0.6805727261759029,
                0.3209733938933629,
                0.3194272738240971,
                0.6790266061066371,
            ],
            [
                0.6685157172603458,
                0.9174478488708967,
                0.33148428273965425,
                0.0825521511291033,
            ],
            [
                0.8019778902252007,
                0.17902872922296542,
                0.19802210977479928,
                0.8209712707770346,
            ],
        ],
        [0, 1, 0],
        [316, 336, 348],
        "5eac358bdf2122763dce3703a79f3005e56e46a4db25ec329a07333d0f7b8093",
        "5a4c2f605814a620f514c1091f10441ce562cd81e902ce701b3cf94ae7576f7d",
    ),
    "test": (
        [
            [
                0.23409664559563403,
                0.4017249751828972,
                0.765903354404366,
                0.5982750248171028,
            ],
            [
                0.7513290219574494,
                0.4682425192680968,
                0.24867097804255056,
                0.5317574807319032,
            ],
            [
                0.13832530718825586,
                0.570953971325061,
                0.8616746928117441,
                0.429046028674939,
            ],
        ],
        [2, 2, 1],
        [350, 316, 334],
        "7bab3ed668ed4992679cff6339fe21bfe7d0c921ddc6187eaa3bc6ef34b888d7",
        "daa0f8f4e3b37b1ddec2afee22f09afb768f0e575f3f568e7469f1ebc6af73c1",
    ),
}


def _sha256(array, dtype):
    return hashlib.sha256(
        np.ascontiguousarray(array, dtype=dtype).tobytes()
    ).hexdigest()


@pytest.fixture(scope="module", params=list(REFERENCE))
def split(request):
    name = request.param
    return name, *yin_yang(split=name)


def test_official_sizes_and_seeds():
    assert dict(YIN_YANG_SPLITS) == {
        "train": (5000, 42),
        "validation": (1000, 41),
        "test": (1000, 40),
    }
    assert YIN_YANG_CLASS_NAMES == ("yin", "yang", "dot")


def test_shapes_and_dtypes(split):
    name, features, labels = split
    size = YIN_YANG_SPLITS[name][0]
    assert features.shape == (size, 4) and features.dtype == np.float64
    assert labels.shape == (size,) and labels.dtype == np.int64


def test_first_samples_match_reference(split):
    name, features, labels = split
    first_rows, first_labels, *_ = REFERENCE[name]
    # Exact: the same random stream and arithmetic give the same bits.
    np.testing.assert_array_equal(features[:3], np.array(first_rows))
    np.testing.assert_array_equal(labels[:3], first_labels)


def test_class_balance_matches_reference(split):
    name, _, labels = split
    counts = REFERENCE[name][2]
    assert np.bincount(labels, minlength=3).tolist() == counts


def test_whole_split_matches_reference(split):
    name, features, labels = split
    *_, features_sha, labels_sha = REFERENCE[name]
    assert _sha256(features, "<f8") == features_sha
    assert _sha256(labels, "<i8") == labels_sha


def test_geometry(split):
    # Independent of the pins: the mirrored features, the disc and the class rule.
    _, features, labels = split
    x, y = features[:, 0], features[:, 1]
    np.testing.assert_array_equal(features[:, 2], 1.0 - x)
    np.testing.assert_array_equal(features[:, 3], 1.0 - y)
    assert np.all(np.hypot(x - 0.5, y - 0.5) <= 0.5)
    to_left = np.hypot(x - 0.25, y - 0.5)
    to_right = np.hypot(x - 0.75, y - 0.5)
    margin = 1e-12  # stay off the borders, where hypot and the rule may round apart
    dot = (to_left < 0.1 - margin) | (to_right < 0.1 - margin)
    yang = ~dot & (
        ((to_left > 0.1 + margin) & (to_left < 0.25 - margin))
        | ((y > 0.5 + margin) & (to_right > 0.25 + margin))
    )
    yin = (
        ~dot
        & (to_left > 0.25 + margin)
        & (to_right > 0.1 + margin)
        & ((y < 0.5 - margin) | (to_right < 0.25 - margin))
    )
    assert np.all(labels[dot] == 2)
    assert np.all(labels[yang] == 1)
    assert np.all(labels[yin] == 0)
    assert dot.sum() + yang.sum() + yin.sum() == len(labels)


def test_custom_sets():
    train_features, train_labels = yin_yang(split="train")
    features, labels = yin_yang(7, 42)
    # One sequential stream per seed: a smaller set is a prefix of a larger one.
    np.testing.assert_array_equal(features, train_features[:7])
    np.testing.assert_array_equal(labels, train_labels[:7])
    again = yin_yang(size=7, seed=np.int64(42))
    np.testing.assert_array_equal(again[0], features)
    other, _ = yin_yang(7, 43)
    assert not np.any(other == features)


def test_leaves_global_numpy_random_state_alone():
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    yin_yang(50, 1)
    np.testing.assert_array_equal(np.random.rand(3), expected)


def test_smallest_and_largest_radii_accepted():
    # The bounds themselves run (and the dot class turns up at the smallest dot).
    _, labels = yin_yang(12, 1, r_small=0.005, r_big=0.5)
    assert 2 in labels
    for r_big in (0.13, 0.29, 7.77):  # (r_big / 100 is accepted, whatever rounding)
        yin_yang(1, 0, r_small=r_big / 100, r_big=r_big)
    for r_big in (1e-149, 1e149):
        features, labels = yin_yang(60, 2, r_small=0.2 * r_big, r_big=r_big)
        assert set(np.unique(labels)) == {0, 1, 2}
        assert np.all(np.isfinite(features[:, :2]))


def test_other_radii():
    features, labels = yin_yang(2000, 5, r_small=0.2, r_big=1.5)
    x, y = features[:, 0], features[:, 1]
    assert np.all(np.hypot(x - 1.5, y - 1.5) <= 1.5)
    np.testing.assert_array_equal(features[:, 2], 1.0 - x)
    dot = (np.hypot(x - 0.75, y - 1.5) < 0.2) | (np.hypot(x - 2.25, y - 1.5) < 0.2)
    np.testing.assert_array_equal(labels == 2, dot)
    assert set(np.unique(labels)) == {0, 1, 2}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(split="training"),
            "`split` must be one of 'train', 'validation', 'test', got 'training'",
        ),
        (dict(split="Train"), "`split` must be one of .*got 'Train'"),
        (dict(split=1), "`split` must be one of .*got 1"),
        (
            dict(split="train", size=100),
            "pass either `split` or `size` and `seed`, got split='train' with size=100, seed=None",
        ),
        (dict(split="test", seed=40), "got split='test' with size=None, seed=40"),
        (dict(), "pass `split` .* or both `size` and `seed`, got size=None, seed=None"),
        (dict(size=10), "got size=10, seed=None"),
        (dict(seed=3), "got size=None, seed=3"),
        (dict(size=0, seed=1), "`size` must be a positive int, got 0"),
        (dict(size=-5, seed=1), "`size` must be a positive int, got -5"),
        (dict(size=5, seed=-1), r"`seed` must be an int in \[0, 2\*\*32\), got -1"),
        (
            dict(size=5, seed=2**32),
            r"`seed` must be an int in \[0, 2\*\*32\), got 4294967296",
        ),
        (
            dict(size=5, seed=1, r_small=0.0),
            "`r_small` must be a positive number, got 0.0",
        ),
        (
            dict(size=5, seed=1, r_big=float("nan")),
            "`r_big` must be a positive number, got nan",
        ),
        (
            dict(size=5, seed=1, r_small=0.25),
            r"`r_small` must be below `r_big` / 2 .*got r_small=0.25 with r_big=0.5",
        ),
        # Dots too small to be hit in reasonable time (the sampler would run on
        # for about 1.6e11 draws per dot sample).
        (
            dict(size=3, seed=0, r_small=1e-6),
            r"`r_small` must be at least r_big / 100 .*about 1.6e\+11 draws .*"
            "got r_small=1e-06 with r_big=0.5",
        ),
        (
            dict(size=3, seed=0, r_small=0.004, r_big=0.5),
            "`r_small` must be at least r_big / 100",
        ),
        # Squared distances that underflow or overflow in float64.
        (
            dict(size=3, seed=0, r_big=1e-200, r_small=1e-201),
            r"`r_small` and `r_big` must lie in \[1e-150, 1e\+150\], got "
            "r_small=1e-201 with r_big=1e-200",
        ),
        (
            dict(size=3, seed=0, r_big=1e308, r_small=1e307),
            r"`r_small` and `r_big` must lie in \[1e-150, 1e\+150\]",
        ),
    ],
)
def test_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        yin_yang(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=2.0, seed=1), "`size` must be a positive int, got 2.0"),
        (dict(size=True, seed=1), "`size` must be a positive int, got True"),
        (dict(size=5, seed=1.5), r"`seed` must be an int in \[0, 2\*\*32\), got 1.5"),
        (
            dict(size=5, seed=1, r_big="0.5"),
            "`r_big` must be a positive number, got '0.5'",
        ),
    ],
)
def test_type_errors(kwargs, message):
    with pytest.raises(TypeError, match=message):
        yin_yang(**kwargs)


# --- yin_yang_spikes: the latency encoding ------------------------------------


def test_yin_yang_spikes_times():
    features = np.array([[0.0, 1.0, 0.5, 0.25], [0.1, 0.9, 0.75, 0.0]])
    train = yin_yang_spikes(
        features, t_early=2.0, t_late=12.0, t_bias=4.0, dtype=jnp.float64
    )
    expected = [[2.0, 12.0, 7.0, 4.5, 4.0], [3.0, 11.0, 9.5, 2.0, 4.0]]
    np.testing.assert_allclose(np.asarray(train.times), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(train.sources), [[0, 1, 2, 3, 4]] * 2)
    assert train.times.dtype == jnp.float64


def test_yin_yang_spikes_defaults_and_shapes():
    features, _ = yin_yang(size=7, seed=3)
    train = yin_yang_spikes(features)
    assert train.times.shape == train.sources.shape == (7, 5)
    np.testing.assert_allclose(
        np.asarray(train.times[:, :4]), 10.0 + 30.0 * features, rtol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(train.times[:, 4]), 20.0)
    single = yin_yang_spikes(features[0])
    assert single.times.shape == (5,)
    np.testing.assert_array_equal(np.asarray(single.times), np.asarray(train.times[0]))


@pytest.mark.parametrize(
    "features, kwargs, message",
    [
        ([[0.5, 1.5, 0.5, 0.5]], {}, r"`features` must lie in \[0, 1\], got \[1.5\]"),
        # (The value given, not its float32 rounding 1.100000023841858.)
        (
            [[0.5, 1.1, 0.5, 0.5]],
            dict(dtype=jnp.float32),
            r"`features` must lie in \[0, 1\], got \[1.1\] ",
        ),
        ([[-0.1, 0.5, 0.5, 0.5]], {}, r"`features` must lie in \[0, 1\]"),
        ([[np.nan, 0.5, 0.5, 0.5]], {}, r"`features` must lie in \[0, 1\]"),
        ([[0.5, 0.5, 0.5]], {}, r"`features` must have shape \(..., 4\)"),
        (
            [[0.5] * 4],
            dict(t_early=5.0, t_late=5.0),
            "`t_late` must be after `t_early`",
        ),
        (
            [[0.5] * 4],
            dict(t_early=6.0, t_late=5.0),
            "`t_late` must be after `t_early`",
        ),
        # A window that rounds to one time in the dtype: every feature one time.
        (
            [[0.5] * 4],
            dict(t_early=1e8, t_late=1e8 + 1, dtype=jnp.float32),
            "`t_late` must be after `t_early` in float32, where they round to one",
        ),
        ([[0.5] * 4], dict(t_early=-1.0), "`t_early` must be a finite time >= 0"),
        ([[0.5] * 4], dict(t_late=float("inf")), "`t_late` must be a finite time"),
        ([[0.5] * 4], dict(t_bias=-2.0), "`t_bias` must be a finite time >= 0"),
        # Times the dtype cannot hold would become +inf, the padding.
        (
            [[0.5] * 4],
            dict(t_late=70000.0, dtype=jnp.float16),
            r"`t_late` \(ms\) holds values beyond the range of float16 .*got \[70000.0\]",
        ),
        (
            [[0.5] * 4],
            dict(t_late=1e39, dtype=jnp.float32),
            r"`t_late` \(ms\) holds values beyond the range of float32 .*got \[1e[+]?39\]",
        ),
        (
            [[0.5] * 4],
            dict(t_bias=1e5, dtype=jnp.float16),
            r"`t_bias` \(ms\) holds values beyond the range of float16 .*got \[100000.0\]",
        ),
    ],
)
def test_yin_yang_spikes_value_errors(features, kwargs, message):
    with pytest.raises(ValueError, match=message):
        yin_yang_spikes(np.array(features), **kwargs)


def test_yin_yang_spikes_type_errors():
    with pytest.raises(TypeError, match="`t_bias` must be a number"):
        yin_yang_spikes(np.full((1, 4), 0.5), t_bias="20")
    # Not encoded with the imaginary part dropped.
    with pytest.raises(TypeError, match="`features` must be real"):
        yin_yang_spikes(np.array([[0.5 + 2j, 0.0, 0.0, 0.0]]))
    # Not read as numbers: True as a feature of 1, strings.
    with pytest.raises(TypeError, match="`features` must be a real number: .*bool"):
        yin_yang_spikes(np.array([[True, False, True, False]]))
    with pytest.raises(TypeError, match="`features` must be a real number: .*'0.5'"):
        yin_yang_spikes([["0.5", "0.5", "0.5", "0.5"]])


def test_yin_yang_spikes_dtype_errors():
    features = np.full((1, 4), 0.5)
    with pytest.raises(
        ValueError, match="`dtype` must be a floating dtype, got 'banana'"
    ):
        yin_yang_spikes(features, dtype="banana")
    with pytest.raises(ValueError, match="`dtype` must be a floating dtype"):
        yin_yang_spikes(features, dtype=jnp.int32)
    # float64 while JAX runs it in float32: refused, not returned as float32.
    with jax.enable_x64(False):
        for dtype in (jnp.float64, "float64"):
            with pytest.raises(ValueError, match="`dtype` float64 is not available"):
                yin_yang_spikes(features, dtype=dtype)
        assert yin_yang_spikes(features).times.dtype == jnp.float32
