"""The Yin-Yang example (`examples/yin_yang.py`) trains: a few steps on a small
subset lower the loss, its training step compiles once, and weight bumping raises
the weights of silent neurons only. The tests share one compilation of the
training step (same shapes, same optimizer object, `bump` passed as an array), and
one compilation of the loss and its gradient (same batch shape)."""

import importlib.util
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax  # noqa: F401  (the example's dependencies, in the test extra)
import pytest
import tqdm  # noqa: F401

from snode_jax.datasets import yin_yang

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "yin_yang.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("yin_yang_example", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def optimizer(example):
    return example.make_optimizer(1e-2, steps_per_epoch=1, epochs=1)


@pytest.fixture(scope="module")
def value_and_grad(example):
    """The batch loss and its gradient, compiled once for the module: every batch
    below has `BATCH` samples (the forward-only checks use the value)."""
    return eqx.filter_jit(eqx.filter_value_and_grad(example.batch_loss, has_aux=True))


BATCH = 64


def test_training_reduces_loss_and_compiles_once(example, optimizer):
    x, y = yin_yang(split="train")
    x, y = x[:BATCH], jnp.asarray(y[:BATCH])
    trains = example.encode(x)
    net = example.make_network(jax.random.key(0), 20)
    opt_state = optimizer.init(eqx.filter(net, example.trainable(net)))

    traces = [example.TRACE_COUNT["train_step"]]
    losses = []
    for _ in range(6):
        # Each step returns the loss of the parameters it starts from.
        net, opt_state, loss, accuracy, failed, _ = example.train_step(
            net, opt_state, optimizer, trains, y, "ttfs", jnp.float32(0)
        )
        assert int(failed) == 0
        assert jnp.isfinite(loss) and 0 <= float(accuracy) <= 1
        losses.append(float(loss))
        traces.append(example.TRACE_COUNT["train_step"])
    # Traced at most once, for the first call (not at all if an earlier test in
    # this module traced these shapes already); the following calls reuse it.
    assert traces[1] - traces[0] <= 1 and traces[1] >= 1
    assert traces[-1] == traces[1], traces
    assert losses[-1] < losses[0], losses
    # Only the weights are trained; the neuron parameters are unchanged.
    assert jnp.array_equal(net.layers[0].dynamics.tau_mem, example.TAU_MEM)


def test_train_step_is_filter_jit(example):
    assert isinstance(example.train_step, type(eqx.filter_jit(lambda: None)))


def test_weight_bumping_raises_only_silent_neurons(example, optimizer, value_and_grad):
    """A hidden neuron whose input weights are all negative never reaches the
    (positive) threshold: its voltage stays at or below 0. It has no spike time, so
    its weights get no gradient, and Adam leaves them unchanged; weight bumping adds
    exactly `bump` to each of them and leaves every other weight as Adam set it."""
    x, y = yin_yang(split="train")
    x, y = x[:BATCH], jnp.asarray(y[:BATCH])
    trains = example.encode(x)
    net = example.make_network(jax.random.key(1), 20)
    silent = jnp.zeros(20, bool).at[jnp.array([1, 4, 15])].set(True)
    w0 = net.layers[0].weight
    net = eqx.tree_at(
        lambda n: (n.layers[0].weight, n.layers[1].weight),
        net,
        (
            jnp.where(silent[:, None], -jnp.abs(w0) - 0.1, jnp.abs(w0) + 0.5),
            jnp.abs(net.layers[1].weight) + 1.0,
        ),
    )
    opt_state = optimizer.init(eqx.filter(net, example.trainable(net)))

    def batch_loss(net, trains, y):
        return value_and_grad(net, trains, y)[0]

    _, (_, failed, activity, _) = batch_loss(net, trains, y)
    assert int(failed) == 0
    active = example.spared(activity)
    assert jnp.array_equal(active[0], ~silent)  # the negative rows are silent
    assert bool(jnp.all(active[1]))  # every output neuron fires on some sample

    # `bump` as an array: one compilation serves both values (the one of the test
    # above, when it ran first).
    bump = 0.25
    traces_before = example.TRACE_COUNT["train_step"]
    step = example.train_step
    plain, *_ = step(net, opt_state, optimizer, trains, y, "ttfs", jnp.float32(0))
    bumped, *_ = step(net, opt_state, optimizer, trains, y, "ttfs", jnp.float32(bump))
    assert example.TRACE_COUNT["train_step"] - traces_before <= 1
    w_in, w_plain, w_bumped = (n.layers[0].weight for n in (net, plain, bumped))
    # Silent rows: no gradient, so Adam leaves them; bumping adds exactly `bump`.
    assert jnp.array_equal(w_plain[silent], w_in[silent])
    assert jnp.array_equal(w_bumped[silent], w_in[silent] + bump)
    # Active rows moved (they have a gradient), the same with and without bumping.
    assert not jnp.array_equal(w_plain[~silent], w_in[~silent])
    assert jnp.array_equal(w_bumped[~silent], w_plain[~silent])
    assert jnp.array_equal(bumped.layers[1].weight, plain.layers[1].weight)

    # Bumped often enough, a silent neuron fires again.
    revived = net
    for _ in range(40):
        _, (_, _, activity, _) = batch_loss(revived, trains, y)
        active = example.spared(activity)
        if bool(jnp.all(active[0])):
            break
        revived = example.bump_silent(revived, active, bump)
    assert bool(jnp.all(active[0]))


def test_bump_and_clip_reject_bad_values(example):
    net = example.make_network(jax.random.key(0), 4)
    active = [jnp.ones(4, bool), jnp.ones(3, bool)]
    with pytest.raises(ValueError, match="`bump` must be a non-negative float"):
        example.bump_silent(net, active, -1.0)
    with pytest.raises(ValueError, match="one entry per layer"):
        example.bump_silent(net, active[:1], 0.1)
    with pytest.raises(ValueError, match="`clip` must be a positive float"):
        example.make_optimizer(1e-2, 1, 1, clip=0.0)
    for average in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"`average` must be in \[0, 1\)"):
            example.train(average=average)
    with pytest.raises(ValueError, match="`lift` must be a non-negative float"):
        example.train(lift=-1.0)
    with pytest.raises(ValueError, match="`lift` applies to the 'ttfs' readout"):
        example.train(lift=1.0, readout="max-voltage")


def test_spared_follows_the_bumping_rule(example):
    """Hidden neurons: (fires on some sample, silent on some sample) = (yes, no),
    (yes, yes), (no, yes); half of the pairs silent. Output neurons: (yes, yes),
    (no, yes)."""
    hidden = dict(
        active=jnp.array([True, True, False]),
        partly_silent=jnp.array([False, True, True]),
        silent_fraction=jnp.array(0.5),
    )
    output = dict(
        active=jnp.array([True, False]),
        partly_silent=jnp.array([True, True]),
        silent_fraction=jnp.array(0.75),
    )
    activity = [hidden, output]
    # Default: only the neurons silent on every sample are bumped.
    for threshold in (None, 0.6):
        h, o = example.spared(activity, threshold)
        assert h.tolist() == [True, True, False] and o.tolist() == [True, False]
    # Half silent > 0.3: every hidden neuron silent on some sample is bumped; the
    # output layer keeps the whole-batch rule.
    h, o = example.spared(activity, 0.3)
    assert h.tolist() == [True, False, False] and o.tolist() == [True, False]
    assert example.spared([None, output], 0.3)[0] is None


def test_samples_with_a_silent_label_neuron_are_left_out_of_the_loss(
    example, value_and_grad
):
    """Output neuron 0 cannot fire (all its input weights negative): samples of
    class 0 are counted and left out of the loss. Two batches that differ only in
    their class-0 samples have the same loss and gradient, one that differs in
    other samples does not, and a batch of class 0 alone has loss 0 and no
    gradient (one batch shape: one compilation)."""
    x, y = yin_yang(split="train")
    x, y = x[:400], np.asarray(y[:400])
    half = BATCH // 2
    zero, others = np.flatnonzero(y == 0), np.flatnonzero(y != 0)
    net = example.make_network(jax.random.key(2), 20)
    w_out = net.layers[1].weight
    net = eqx.tree_at(
        lambda n: n.layers[1].weight, net, w_out.at[0].set(-jnp.abs(w_out[0]) - 0.1)
    )

    def run(idx):
        return value_and_grad(net, example.encode(x[idx]), jnp.asarray(y[idx]))

    assert len(zero) >= BATCH and len(others) >= BATCH
    a = np.concatenate([others[:half], zero[:half]])
    b = np.concatenate([others[:half], zero[half:BATCH]])  # other class-0 samples
    c = np.concatenate([others[half:BATCH], zero[:half]])  # other classes 1, 2
    (loss_a, (acc_a, failed, _, silent_a)), grad_a = run(a)
    (loss_b, (_, _, _, silent_b)), grad_b = run(b)
    (loss_c, _), grad_c = run(c)
    # Every class-0 sample is counted, and maybe a few others whose label neuron
    # is silent at this initialisation (the same ones in `a` and `b`).
    assert int(failed) == 0 and int(silent_a) >= half
    assert int(silent_b) == int(silent_a)
    assert float(acc_a) <= 0.5
    assert float(loss_a) == float(loss_b) and float(loss_a) != float(loss_c)
    for ga, gb in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
        np.testing.assert_array_equal(np.asarray(ga), np.asarray(gb))
    assert not np.array_equal(
        np.asarray(grad_a.layers[1].weight), np.asarray(grad_c.layers[1].weight)
    )
    (loss_z, (_, _, _, silent_z)), grad_z = run(zero[:BATCH])
    assert float(loss_z) == 0.0 and int(silent_z) == BATCH
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grad_z))


def test_lift_raises_silent_label_neurons_by_their_peak_voltage(
    example, value_and_grad
):
    """With `lift > 0` a sample whose label neuron stays silent adds `lift` times
    the neuron's distance to threshold (threshold minus peak voltage) to the loss.
    Ground truth for the peak: the output layer's own voltage, saved on a 0.01 ms
    grid (the sampled maximum lies below the exact one by at most the grid step
    times the slope, about 1e-3). Checked on a batch with a few such samples (the
    subset branch) and one where all are (the full branch); the gradient of the
    term raises the silent neuron's weights from every hidden neuron that fired."""
    x, y = yin_yang(split="train")
    x, y = x[:400], np.asarray(y[:400])
    net = example.make_network(jax.random.key(3), 20)
    w_out = net.layers[1].weight
    # Neuron 0 gets 5% of its input: below threshold, but not flat.
    net = eqx.tree_at(lambda n: n.layers[1].weight, net, w_out.at[0].mul(0.05))
    loss_and_grad = value_and_grad
    grid = jnp.linspace(0.0, example.T_END, 6001, dtype=example.DTYPE)

    def sampled_peak(train):
        nsol = net.simulate(
            train,
            t_end=example.T_END,
            max_spikes=example.MAX_SPIKES,
            after_max_spikes=example.AFTER_MAX_SPIKES,
            throw=False,
        )
        out = net.layers[1].simulate(
            nsol.layers[0].spike_train(),
            t_end=example.T_END,
            max_spikes=1,
            after_max_spikes="silence",
            save_times=grid,
            throw=False,
        )
        return jnp.max(out.saved_states.v, axis=0), nsol.layers[1].num_spikes > 0

    zero, others = np.flatnonzero(y == 0), np.flatnonzero(y != 0)
    mixed = np.concatenate([others[: BATCH - 12], zero[:12]])
    for idx in (mixed, zero[:BATCH]):
        trains = example.encode(x[idx])
        labels = jnp.asarray(y[idx])
        (plain, (_, _, _, n_silent)), _ = loss_and_grad(net, trains, labels)
        (lifted, _), grad = loss_and_grad(
            net, trains, labels, "ttfs", example.LOSS, jnp.float32(5.0)
        )
        peak, fired = jax.vmap(sampled_peak)(trains)
        label_peak = np.asarray(peak)[np.arange(BATCH), y[idx]]
        silent = ~np.asarray(fired)[np.arange(BATCH), y[idx]]
        assert int(n_silent) == silent.sum() and silent.sum() >= 12
        assert np.all(label_peak[silent] < 1.0)
        expected = 5.0 * np.sum(1.0 - label_peak[silent]) / BATCH
        # Each sampled peak is low by at most ~1e-3; float32 sums.
        assert float(lifted) - float(plain) <= expected + 1e-4
        assert (
            float(lifted) - float(plain)
            >= expected - 5.0 * 1.5e-3 * silent.sum() / BATCH
        )
    # All class 0: the loss is the lift term alone; raising the weights of neuron 0
    # lowers it (its peak input comes from the hidden neurons that fired).
    g0 = np.asarray(grad.layers[1].weight[0])
    assert np.all(g0 <= 0) and np.any(g0 < 0)
    assert not np.any(np.asarray(grad.layers[1].weight[1:]))


def test_average_weights_is_a_moving_average_of_the_trained_weights(example):
    a = example.make_network(jax.random.key(0), 4)
    b = example.make_network(jax.random.key(1), 4)
    avg = example.average_weights(a, b, jnp.float32(0.9))
    for la, lb, lv in zip(a.layers, b.layers, avg.layers):
        np.testing.assert_allclose(
            np.asarray(lv.weight),
            0.9 * np.asarray(la.weight) + 0.1 * np.asarray(lb.weight),
            rtol=1e-6,
        )
        assert lv.dynamics is lb.dynamics or eqx.tree_equal(lv.dynamics, lb.dynamics)


def _load_summary():
    path = _PATH.parent / "yin_yang_summary.py"
    spec = importlib.util.spec_from_file_location("yin_yang_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder, seed, tests_acc, finished=True, best=2):
    import json

    epochs = [
        dict(
            epoch=k + 1,
            train_accuracy=0.9 + 0.01 * k,
            train_silent_label=[3, 7, 1][k],
            silent_hidden=10 + k,
            epoch_time_s=[30.0, 2.0, 4.0][k],
        )
        for k in range(3)
    ]
    metrics = dict(
        config=dict(seed=seed, epochs=3),
        epochs=epochs,
        best=dict(epoch=best, val_accuracy=0.95),
    )
    # (yin_yang.py writes `test: null` after each epoch, the result at the end.)
    metrics["test"] = (
        dict(accuracy=tests_acc, failed=0, epoch=best) if finished else None
    )
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_summary_table_and_mean(tmp_path, capsys):
    """`examples/yin_yang_summary.py` reads the runs' metrics: one row per run
    (best epoch's training accuracy, last epoch's silent hidden count, the epoch
    times), and the mean and sample standard deviation of the test accuracies."""
    summary = _load_summary()
    _write_run(tmp_path / "a", 0, 0.97)
    _write_run(tmp_path / "b", 1, 0.98)
    summary.main([str(tmp_path / "a"), str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert (
        "| 0 | 2 | 0.950 | 0.970 | 0.910 / 0.920 | 12 | 7 | 4.0 | 2.0 | 30.0 | 36 |"
        in out
    )
    assert "| 1 | 2 | 0.950 | 0.980 |" in out
    # mean 97.5 %, sample std of (0.97, 0.98) = 0.707 points
    assert "mean 97.50 %, std 0.71 %" in out
    _write_run(tmp_path / "c", 2, 0.99, finished=False)
    with pytest.raises(SystemExit, match="did not finish"):
        summary.main([str(tmp_path / "c")])
    # Best at epoch 0 (no epoch beat the untrained network, whose training
    # accuracy is not measured): it read the last epoch's entry and failed.
    _write_run(tmp_path / "d", 3, 0.5, best=0)
    summary.main([str(tmp_path / "d")])
    assert "| 3 | 0 | 0.950 | 0.500 | n/a / 0.920 |" in capsys.readouterr().out


def test_profile_counts_what_the_network_does(tmp_path, monkeypatch, example):
    """`examples/yin_yang_profile.py` on a saved run: the hidden spikes per sample
    are those of the network's own simulation, every layer's loop takes at least
    one iteration per input event, and every timing is a positive number."""
    import json

    monkeypatch.syspath_prepend(str(_PATH.parent))
    spec = importlib.util.spec_from_file_location(
        "yin_yang_profile", _PATH.parent / "yin_yang_profile.py"
    )
    profile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(profile)
    run = tmp_path / "run"
    run.mkdir()
    net = example.make_network(jax.random.key(5), 12, "ttfs")
    eqx.tree_serialise_leaves(run / "best.eqx", net)
    config = dict(seed=5, hidden=12, readout="ttfs")
    (run / "metrics.json").write_text(json.dumps(dict(config=config)))
    batch = 16
    row = profile.profile(str(run), reps=1, batch=batch)
    features, _ = yin_yang(split="train")
    trains = example.encode(features[:batch])
    hidden = jax.vmap(
        lambda t: (
            net.layers[0]
            .simulate(
                t, t_end=example.T_END, max_spikes=example.MAX_SPIKES[0], throw=False
            )
            .num_spikes
        )
    )(trains)
    assert row["hidden_spikes_per_sample"] == pytest.approx(
        float(jnp.mean(jnp.sum(hidden, axis=1)))
    )
    assert row["hidden_spikes_per_sample"] > 0
    assert row["hidden_iterations"][0] >= 5  # 5 input spikes per sample
    # The output layer takes one iteration per hidden spike at least.
    assert row["output_iterations"][0] >= int(jnp.max(jnp.sum(hidden, axis=1)))
    for key in ("value_and_grad", "forward", "hidden_forward", "output_forward"):
        # (Not compared with each other: timings on a shared machine are noisy.)
        seconds, first = row[key]
        assert np.isfinite([seconds, first]).all() and seconds > 0 and first > 0


@pytest.mark.parametrize("readout", ["ttfs", "max-voltage"])
def test_plot_of_a_saved_run(example, tmp_path, readout):
    """`examples/yin_yang_plot.py` on an (untrained) network saved as a run: the
    sample's raster ran without the output layer's `after_max_spikes` (an output
    neuron firing twice failed it, as here on test sample 0) and with one
    `max_spikes` per layer where a readout has none."""
    import json

    spec = importlib.util.spec_from_file_location(
        "yin_yang_plot", _PATH.parent / "yin_yang_plot.py"
    )
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    run = tmp_path / readout
    run.mkdir()
    config = dict(seed=0, hidden=60, readout=readout)
    metrics = dict(config=config, test=dict(accuracy=0.3))
    (run / "metrics.json").write_text(json.dumps(metrics))
    net = example.make_network(jax.random.key(0), 60, readout)
    eqx.tree_serialise_leaves(run / "best.eqx", net)
    png = tmp_path / "plot.png"
    plot.main([str(run), "--png", str(png), "--grid", "4"])
    assert png.stat().st_size > 10_000
