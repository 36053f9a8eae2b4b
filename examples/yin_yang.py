"""Learning with spike times: the Yin-Yang benchmark.

A 5-input, hidden (spiking, current-based LIF), 3-output network classifies the
Yin-Yang dataset (`snode_jax.datasets.yin_yang`) from spike times alone. Each of the
four features is one input spike (a latency code, `snode_jax.datasets.
yin_yang_spikes`), plus a bias spike at a fixed time. Training follows Wunderlich &
Pehle, "Event-based backpropagation can compute exact gradients for spiking neural
networks" (Scientific Reports 11, 12829, 2021): Adam on exact spike-time gradients
(the gradients EventProp computes, here from differentiating the event-driven
simulation), with a time-to-first-spike loss; `--readout max-voltage` trains a
non-spiking readout on its maximum voltage instead.

    pip install -e ".[examples]"
    python examples/yin_yang.py --train-size 500 --epochs 3 --hidden 60   # a quick look
    python examples/yin_yang.py --seed 0 --out runs/yy0                   # the full run

**Hyperparameters** (defaults), from the Yin-Yang run of the EventProp paper's code
(https://github.com/eventprop/eventprop, `paper/figure2.py` with
`eventprop/yinyang.py`): `tau_mem = 20 ms`, `tau_syn = 5 ms`, threshold 1, 200
hidden neurons; inputs at `10 + 30 x` ms, bias spike at 20 ms; hidden weights
`N(1.5, 0.78)`, output weights `N(0.93, 0.1)`; loss temperature `tau0 = 0.5 ms`,
regulariser `alpha = 3e-3`, `tau1 = 6.4 ms`; Adam, learning rate `1e-2`, batch 256,
learning rate times 0.95 every 5 epochs, 300 epochs. One addition: weight
bumping of neurons silent on a whole batch, `--bump 1e-3` (below; `--bump 0` is
EventProp's recipe exactly). The weights are in the
paper's units: its membrane is `tau_mem dv/dt = -v + i_syn`, which is
`sj.CubaLIFDynamics` with `C_mem = tau_mem`. The hidden weights have a positive
mean so that hidden neurons fire from the start (with zero-mean weights most stay
silent, and a silent network has no spike-time gradient).

**Loss** (time to first spike, as in Göltz et al., "Fast and energy-efficient
neuromorphic deep learning with first-spike times", Nature Machine Intelligence 3,
2021, and Wunderlich & Pehle): with `t` the output neurons' first spike times and
`k` the label,

    loss = cross_entropy(logits = -t / tau0, label = k) + alpha * (exp(t_k / tau1) - 1)

The class is the output neuron that fires first. **Silent output neurons**: a
wrong neuron that does not fire by `t_end` (60 ms) counts as firing at `t_end` in
the loss (its time has no gradient; there is no spike to move). A sample whose
label neuron does not fire is left out of the loss, as in EventProp's
implementation, and counted (`silent label`, per epoch): its cross-entropy would
only push the other output neurons later, and runs that kept such samples (with
the label at `t_end`) collapsed after 160 epochs of the paper's schedule, the
output neurons falling silent one after another on their own classes. With
`--lift L` (`L > 0`; default 0, EventProp's rule), such a sample adds `L` times its
label neuron's distance to threshold, `v_threshold - max_t v(t)`, to the loss: the
peak voltage of a neuron that never fired is exact and differentiable
(`peak_voltage`: a `LeakyReadout` with the output layer's weights), so the
gradient raises the label neuron's input from the hidden neurons that fire before
its peak until it fires; then its spike time takes over. (The term makes a
training step about 25% dearer, measured at batch 256, 200 hidden, even on
batches without such samples.) The initial output weights have
a positive mean so that output neurons fire from the start. Such a sample, and
one with no output spike at all, counts as an error in the accuracy.

**Silent hidden neurons and weight bumping.** A hidden neuron that fires on no
sample has no spike time, hence no gradient, and stays silent for good. With the
initial weights about a third of the hidden neurons are silent on every sample, and
without bumping training silences more (about 150 of 200 by the end of the paper's
schedule). `--bump B` (Göltz et al.; default `1e-3`) adds `B` to the input weights
of every spiking neuron that fired on no sample of the batch, after each Adam step
(`bump_silent`): every hidden neuron then stays in use, and the test accuracy over
5 seeds rose from 97.1 % to 97.7 % (examples/RESULTS.md); the
number of hidden neurons silent on the whole validation set is printed after
every epoch (`silent hidden`) and kept in the metrics (`silent_hidden`). With
`--bump-threshold F`, as in Göltz et al. (`F = 0.3`), a hidden layer in which more
than a fraction `F` of the batch's (sample, neuron) pairs is silent has every
neuron bumped that is silent on some sample (`spared`).

**Further options.** `--clip C` scales the gradient down to a global norm of at
most `C` before Adam (`optax.clip_by_global_norm`); `--tau0` and `--alpha` set the
loss temperature and the weight of the regulariser.

**Failed samples.** A sample whose run fills a hidden neuron's spike buffer
(`max_spikes`, 8) stops early with `sj.RESULTS.spike_buffer_full` (output neurons
fire once and then fall silent: only their first spike counts); such samples are
counted, shown in the progress bar (`failed`) and the metrics, and left out of the
loss (a mask), never silently used. In evaluation they count as errors.

**Averaged weights for model selection.** With `--average D` (`0 < D < 1`;
default 0, the last weights), what is evaluated on the validation split after
every epoch, and kept when best, is an exponential moving average of the weights
over the training steps with decay `D` per step (`average_weights`; 0.99 is about
5 epochs of 19 steps): the selection then picks a region of the run rather than
the step that was luckiest on 1000 validation samples. The average starts at the
initial weights, without a bias correction, so the first epochs' validation
figures lag the training (after one epoch of 19 steps at 0.99, 83 % of the
average is still the initial weights).

Validation accuracy is measured after every epoch and the best parameters are kept;
the test accuracy of those is reported once, at the end. With `--out DIR` the best
parameters are saved with `eqx.tree_serialise_leaves` (`DIR/best.eqx`) and the
per-epoch metrics and wall times as JSON (`DIR/metrics.json`; the first epoch's
time includes compiling the training step).
"""

import argparse
import json
import math
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import snode_jax as sj
from snode_jax.datasets import yin_yang, yin_yang_spikes

# Encoding and simulation (ms).
T_EARLY, T_LATE, T_BIAS = 10.0, 40.0, 20.0
T_END = 60.0  # last input at 40 ms, plus four synaptic time constants
TAU_MEM, TAU_SYN = 20.0, 5.0
# Spike buffers per neuron (hidden, output). A hidden neuron that would fire a
# ninth time stops the run (`spike_buffer_full`). Only an output neuron's first
# spike counts, so output neurons fire once and then fall silent
# (`after_max_spikes="silence"`): their first spike times and gradients are those
# of neurons that fire on, for one event-loop iteration per output neuron instead
# of one per output spike (about 20 per neuron at the start of training).
MAX_SPIKES = (8, 1)
AFTER_MAX_SPIKES = ("fail", "silence")

# Loss (Wunderlich & Pehle 2021, Yin-Yang).
TAU0, TAU1, ALPHA = 0.5, 6.4, 3e-3
LOSS = (TAU0, TAU1, ALPHA)

# Initial weights, (mean, std), in units of the membrane `tau_mem dv/dt = -v + i`.
HIDDEN_INIT = (1.5, 0.78)
OUTPUT_INIT = (0.93, 0.1)
READOUT_INIT = (0.2, 0.37)  # the EventProp paper's max-voltage readout (MNIST)

# Default of `--bump`: after each step, the input weights of every spiking neuron
# silent on the whole batch go up by this much (`bump_silent`). Not in EventProp's
# recipe; with it every hidden neuron stays in use (examples/RESULTS.md).
BUMP = 1e-3

# Defaults of `--lift` (weight of a silent label neuron's distance to threshold in
# the loss, `batch_loss`) and `--average` (decay per step of the moving average of
# the weights that model selection evaluates): 0, off, EventProp's recipe.
LIFT = 0.0
LIFT_SUBSET = 32  # batches with at most this many such samples lift only those
AVERAGE = 0.0

DTYPE = jnp.float32
READOUTS = ("ttfs", "max-voltage")

# How often `train_step` has been traced (compiled); a test checks it stays at one.
TRACE_COUNT = {"train_step": 0}


def dynamics() -> sj.CubaLIFDynamics:
    """Current-based LIF with `tau_mem dv/dt = -v + i_syn` (`C_mem = tau_mem`)."""
    return sj.CubaLIFDynamics(tau_mem=TAU_MEM, tau_syn=TAU_SYN, C_mem=TAU_MEM)


def _normal_weight(key, shape, mean_std):
    mean, std = mean_std
    return mean + std * jax.random.normal(key, shape, DTYPE)


def make_network(key, n_hidden: int, readout: str = "ttfs") -> sj.SpikingODENetwork:
    """5 inputs -> `n_hidden` spiking CubaLIF -> 3 outputs (spiking for `"ttfs"`, a
    `LeakyReadout` for `"max-voltage"`), weights drawn as in the EventProp paper."""
    if readout not in READOUTS:
        raise ValueError(f"`readout` must be one of {READOUTS}, got {readout!r}.")
    k1, k2, k3, k4 = jax.random.split(key, 4)
    hidden = sj.SpikingODELayer(5, n_hidden, dynamics(), dtype=DTYPE, key=k1)
    hidden = eqx.tree_at(
        lambda m: m.weight, hidden, _normal_weight(k2, (n_hidden, 5), HIDDEN_INIT)
    )
    if readout == "ttfs":
        out = sj.SpikingODELayer(n_hidden, 3, dynamics(), dtype=DTYPE, key=k3)
        init = OUTPUT_INIT
    else:
        out = sj.LeakyReadout(n_hidden, 3, dynamics(), dtype=DTYPE, key=k3)
        init = READOUT_INIT
    out = eqx.tree_at(lambda m: m.weight, out, _normal_weight(k4, (3, n_hidden), init))
    return sj.SpikingODENetwork([hidden, out])


def encode(features) -> sj.SpikeTrain:
    """A batch of input spike trains (times `(n, 5)`) for `features` `(n, 4)`."""
    return yin_yang_spikes(
        features, t_early=T_EARLY, t_late=T_LATE, t_bias=T_BIAS, dtype=DTYPE
    )


def _run(net: sj.SpikingODENetwork, train: sj.SpikeTrain):
    """One sample: the output scores (first spike times, `t_end` for silent neurons,
    or maximum voltages), whether any output neuron fired (TTFS), whether every
    layer ran to its end, and per spiking layer which neurons fired."""
    return _run_with_hidden(net, train)[:4]


def simulate(net: sj.SpikingODENetwork, train: sj.SpikeTrain, throw: bool = False):
    """The network's run on `train` as trained: a spiking output layer keeps its
    first spike (`AFTER_MAX_SPIKES`), a readout has no spike buffer."""
    if isinstance(net.layers[-1], sj.SpikingODELayer):
        return net.simulate(
            train,
            t_end=T_END,
            max_spikes=MAX_SPIKES,
            after_max_spikes=AFTER_MAX_SPIKES,
            throw=throw,
        )
    return net.simulate(train, t_end=T_END, max_spikes=MAX_SPIKES[0], throw=throw)


def _run_with_hidden(net: sj.SpikingODENetwork, train: sj.SpikeTrain):
    """`_run`'s results, and the spike train of the last spiking layer before the
    output (what drives the output layer)."""
    nsol = simulate(net, train)
    ok = jnp.array(True)
    neuron_fired = []
    for layer_sol in nsol.layers:
        if isinstance(layer_sol, sj.Solution):
            ok = ok & (layer_sol.result == sj.RESULTS.successful)
            neuron_fired.append(layer_sol.num_spikes > 0)
        else:
            neuron_fired.append(None)
    out = nsol.output
    drive = nsol.layers[-2].spike_train(throw=False)  # (a failure: in `ok`)
    if isinstance(out, sj.Solution):
        first = sj.first_spike_times(out, throw=False)  # (a failure: in `ok`)
        fired = jnp.isfinite(first)
        return jnp.where(fired, first, T_END), jnp.any(fired), ok, neuron_fired, drive
    return out.max_voltage, jnp.array(True), ok, neuron_fired, drive


def peak_voltage(out: sj.SpikingODELayer, drive: sj.SpikeTrain, t_end=T_END):
    """The largest membrane voltage of each neuron of the spiking output layer
    `out` over `[0, t_end]`, driven by `drive`, as if it never fired. For a neuron
    that did not fire this is its true peak (below threshold), exact and
    differentiable: its membrane never reset, so it follows a `LeakyReadout` with
    the same weights and dynamics."""
    readout = sj.LeakyReadout(
        out.n_inputs,
        out.n_neurons,
        out.dynamics,
        dtype=out.weight.dtype,
        key=jax.random.key(0),
    )
    readout = eqx.tree_at(lambda r: r.weight, readout, out.weight)
    return readout.simulate(drive, t_end=t_end, throw=False).max_voltage


def _forward(net: sj.SpikingODENetwork, train: sj.SpikeTrain):
    """One sample: the output scores (first spike times, `t_end` for silent neurons,
    or maximum voltages), whether any output neuron fired (TTFS), and whether every
    layer ran to its end."""
    scores, any_fired, ok, _ = _run(net, train)
    return scores, any_fired, ok


def _sample_loss(scores, label, readout: str, loss=LOSS):
    if readout == "ttfs":
        tau0, tau1, alpha = loss
        ce = optax.softmax_cross_entropy_with_integer_labels(-scores / tau0, label)
        return ce + alpha * (jnp.exp(scores[label] / tau1) - 1.0)
    return optax.softmax_cross_entropy_with_integer_labels(scores, label)


def _predict(scores, any_fired, readout: str):
    """The predicted class; -1 (always wrong) when no output neuron fired."""
    if readout == "ttfs":
        return jnp.where(any_fired, jnp.argmin(scores), -1)
    return jnp.argmax(scores)


def batch_loss(
    net,
    trains: sj.SpikeTrain,
    labels,
    readout: str = "ttfs",
    loss=LOSS,
    lift: float | jax.Array = 0.0,
):
    """Mean loss over the samples that ran to the end and, with the TTFS readout,
    whose label neuron fired (loss constants `loss = (tau0, tau1, alpha)`); with
    `lift > 0` (TTFS), plus `lift` times the mean over the samples that ran to the
    end of each silent label neuron's distance to threshold (`v_threshold` minus
    its peak voltage, `peak_voltage`), which raises a label neuron that stays
    silent (its spike time has no gradient) until it fires; aux:
    (accuracy over the samples that ran to the end, number of failed samples,
    activity, number of those with a silent label neuron). The activity has per
    layer (`None` for a non-spiking readout) a dict over the samples that ran to
    the end: `"active"`, whether each neuron fired on some sample;
    `"partly_silent"`, whether it was silent on some sample; `"silent_fraction"`,
    the fraction of (sample, neuron) pairs without a spike."""
    scores, fired, ok, neuron_fired, drive = jax.vmap(
        _run_with_hidden, in_axes=(None, 0)
    )(net, trains)
    per_sample = jax.vmap(_sample_loss, in_axes=(0, 0, None, None))(
        scores, labels, readout, loss
    )
    n_ok = jnp.sum(ok)
    denom = jnp.maximum(n_ok, 1)
    if readout == "ttfs":
        # As in EventProp's implementation, a sample whose label neuron did not
        # fire is left out of the loss: its label time has no gradient, and its
        # cross-entropy would only push the other output neurons later, towards
        # silence on their own classes too (runs that kept these samples
        # collapsed, one output neuron silenced after another).
        label_fired = jnp.take_along_axis(neuron_fired[-1], labels[:, None], 1)[:, 0]
    else:
        label_fired = jnp.ones_like(ok)
    used = ok & label_fired
    mean_loss = jnp.sum(jnp.where(used, per_sample, 0.0)) / jnp.maximum(
        jnp.sum(used), 1
    )
    if readout == "ttfs" and not (isinstance(lift, (int, float)) and lift == 0):
        out = net.layers[-1]
        lifted = ok & ~label_fired

        def distance_to_threshold(take):
            """The term over the samples `take` (the lifted ones among them)."""
            chosen = jax.tree.map(lambda a: a[take], drive)
            peak = jax.vmap(peak_voltage, in_axes=(None, 0))(out, chosen)
            label = labels[take]
            peak = jnp.take_along_axis(peak, label[:, None], 1)[:, 0]
            threshold = jnp.broadcast_to(out.dynamics.v_threshold, (out.n_neurons,))
            gap = threshold[label] - peak
            return jnp.sum(jnp.where(lifted[take], gap, 0.0)) / denom

        # Only batches with a silent label neuron run the readout, and on the
        # first `few` samples in an order that puts those samples first when
        # there are no more of them (one readout per sample costs about as much
        # as the output layer).
        few = min(LIFT_SUBSET, lifted.shape[0])
        order = jnp.argsort(~lifted, stable=True)
        n_lifted = jnp.sum(lifted)
        branch = jnp.where(
            (n_lifted == 0) | (lift <= 0), 0, jnp.where(n_lifted <= few, 1, 2)
        )
        mean_loss = mean_loss + lift * jax.lax.switch(
            branch,
            [
                lambda: jnp.zeros((), mean_loss.dtype),
                lambda: distance_to_threshold(order[:few]),
                lambda: distance_to_threshold(jnp.arange(lifted.shape[0])),
            ],
        )
    predicted = jax.vmap(_predict, in_axes=(0, 0, None))(scores, fired, readout)
    accuracy = jnp.sum(ok & (predicted == labels)) / denom
    activity = [
        None
        if f is None
        else dict(
            active=jnp.any(f & ok[:, None], axis=0),
            partly_silent=jnp.any(~f & ok[:, None], axis=0),
            silent_fraction=jnp.sum(~f & ok[:, None]) / (denom * f.shape[1]),
        )
        for f in neuron_fired
    ]
    return mean_loss, (accuracy, jnp.sum(~ok), activity, jnp.sum(ok & ~label_fired))


def spared(activity, threshold: float | None = None):
    """Which neurons weight bumping leaves alone, per layer (`bump_silent`'s
    `active`), from the `activity` of `batch_loss`. Bumped are the neurons silent on
    the whole batch; with `threshold`, in a hidden layer whose fraction of silent
    (sample, neuron) pairs exceeds `threshold`, also every neuron silent on some
    sample (the rule of Göltz et al., there with threshold 0.3). The output layer
    only ever has its wholly silent neurons bumped: a wrong output neuron that stays
    silent is what the loss asks for."""
    masks = []
    last = len(activity) - 1
    for i, act in enumerate(activity):
        if act is None:
            masks.append(None)
        elif threshold is None or i == last:
            masks.append(act["active"])
        else:
            too_quiet = act["silent_fraction"] > threshold
            masks.append(act["active"] & ~(too_quiet & act["partly_silent"]))
    return masks


def bump_silent(net: sj.SpikingODENetwork, active, bump: float):
    """Weight bumping (Göltz et al. 2021): every spiking neuron that fired on no
    sample of the batch gets `bump` added to each of its input weights, so that it
    crosses threshold again (a silent neuron has no spike time, hence no gradient,
    and would otherwise stay silent for good). Other neurons are left alone.

    **Arguments:**

    - `net`: the network.
    - `active`: per layer, a boolean `(n_neurons,)` array, whether each neuron fired
        on some sample of the batch, or `None` for a layer that is not bumped (a
        non-spiking readout).
    - `bump`: the increment, a non-negative float (or a scalar array, so that
        `train_step` compiles once for all values).

    **Returns:**

    The network with the silent neurons' input weights raised.
    """
    if isinstance(bump, (int, float)) and not (math.isfinite(bump) and bump >= 0):
        raise ValueError(f"`bump` must be a non-negative float, got {bump!r}.")
    if len(active) != len(net.layers):
        raise ValueError(
            f"`active` must have one entry per layer ({len(net.layers)}), got "
            f"{len(active)}."
        )
    weights = [
        layer.weight
        if act is None
        else layer.weight
        + jnp.where(act, 0.0, bump).astype(layer.weight.dtype)[:, None]
        for layer, act in zip(net.layers, active)
    ]
    return eqx.tree_at(lambda n: [layer.weight for layer in n.layers], net, weights)


def trainable(net: sj.SpikingODENetwork):
    """The filter of what is trained: the weights of every layer (the neuron
    parameters, time constants and thresholds, stay fixed)."""
    spec = jax.tree.map(lambda _: False, net)
    return eqx.tree_at(
        lambda n: [layer.weight for layer in n.layers],
        spec,
        [True] * len(net.layers),
    )


@eqx.filter_jit
def train_step(
    net,
    opt_state,
    optimizer,
    trains,
    labels,
    readout: str = "ttfs",
    bump: float = 0.0,
    loss=LOSS,
    bump_threshold: float | None = None,
    lift: float | jax.Array = 0.0,
):
    """One Adam step on a batch (loss constants `loss = (tau0, tau1, alpha)`, and
    `lift` for silent label neurons, see `batch_loss`), then
    (with `bump > 0`) weight bumping of the neurons that stayed silent on the whole
    batch (`bump_silent`; with `bump_threshold`, the rule of `spared`); returns the
    new network and optimiser state, the loss, batch accuracy, the number of failed
    samples and the number of samples with a silent label neuron (left out of the
    loss)."""
    TRACE_COUNT["train_step"] += 1  # runs only while tracing
    params, rest = eqx.partition(net, trainable(net))

    def loss_of_params(params):
        return batch_loss(
            eqx.combine(params, rest), trains, labels, readout, loss, lift
        )

    (loss, (accuracy, failed, activity, silent_label)), grads = jax.value_and_grad(
        loss_of_params, has_aux=True
    )(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    net = eqx.combine(eqx.apply_updates(params, updates), rest)
    if not (isinstance(bump, (int, float)) and bump == 0):
        net = bump_silent(net, spared(activity, bump_threshold), bump)
    return net, opt_state, loss, accuracy, failed, silent_label


@eqx.filter_jit
def _eval_batch(net, trains, labels, readout: str):
    scores, fired, ok, neuron_fired = jax.vmap(_run, in_axes=(None, 0))(net, trains)
    predicted = jax.vmap(_predict, in_axes=(0, 0, None))(scores, fired, readout)
    hidden_active = jnp.any(neuron_fired[0], axis=0)
    return jnp.sum(ok & (predicted == labels)), jnp.sum(~ok), hidden_active


def evaluate(
    net,
    features,
    labels,
    readout: str = "ttfs",
    batch_size: int = 500,
    with_silent: bool = False,
):
    """(accuracy, failed samples) on a whole set; failed samples count as errors.
    With `with_silent`, also the number of hidden neurons that fire on no sample of
    the set."""
    correct = failed = 0
    active = np.zeros(net.layers[0].weight.shape[0], bool)
    for start in range(0, len(labels), batch_size):
        x = features[start : start + batch_size]
        y = jnp.asarray(labels[start : start + batch_size])
        c, f, a = _eval_batch(net, encode(x), y, readout)
        correct += int(c)
        failed += int(f)
        active |= np.asarray(a)
    if with_silent:
        return correct / len(labels), failed, int(np.sum(~active))
    return correct / len(labels), failed


@eqx.filter_jit
def average_weights(average, net, decay):
    """One step of an exponential moving average of the trained weights:
    `decay * average + (1 - decay) * weights`, as a network (what is not trained is
    `net`'s). Evaluated and selected instead of the last weights (`--average`), it
    smooths the noise of the last steps out of model selection."""
    params, rest = eqx.partition(net, trainable(net))
    averaged = jax.tree.map(
        lambda a, p: decay * a + (1 - decay) * p,
        eqx.filter(average, trainable(average)),
        params,
    )
    return eqx.combine(averaged, rest)


SCHEDULES = ("paper", "cosine")


def make_optimizer(
    lr: float,
    steps_per_epoch: int,
    epochs: int,
    schedule="paper",
    clip: float | None = None,
):
    """Adam. `"paper"`: the learning rate falls by 0.95 every 5 epochs (the paper's
    300-epoch run); `"cosine"`: it falls to 0 along a cosine over the whole run (for
    short runs, which would otherwise end at the initial rate). With `clip`, the
    gradient is first scaled down to a global norm of at most `clip`."""
    if schedule == "paper":
        rate = optax.exponential_decay(
            lr, transition_steps=5 * steps_per_epoch, decay_rate=0.95, staircase=True
        )
    elif schedule == "cosine":
        rate = optax.cosine_decay_schedule(lr, decay_steps=epochs * steps_per_epoch)
    else:
        raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {schedule!r}.")
    if clip is None:
        return optax.adam(rate)
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"`clip` must be a positive float or None, got {clip!r}.")
    return optax.chain(optax.clip_by_global_norm(clip), optax.adam(rate))


def _batches(rng, n: int, batch_size: int):
    """Shuffled full batches (one shape, so one compilation); the remainder of an
    epoch is dropped, a different one each epoch."""
    order = rng.permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
        yield order[start : start + batch_size]


def train(
    *,
    seed: int = 0,
    epochs: int = 300,
    batch_size: int = 256,
    hidden: int = 200,
    lr: float = 1e-2,
    train_size: int | None = None,
    readout: str = "ttfs",
    schedule: str = "paper",
    bump: float = BUMP,
    bump_threshold: float | None = None,
    clip: float | None = None,
    tau0: float = TAU0,
    alpha: float = ALPHA,
    lift: float = LIFT,
    average: float = AVERAGE,
    out: str | None = None,
    progress: bool = True,
) -> dict:
    """Train, select on validation accuracy, report test accuracy; returns the
    metrics (and writes them, with the best parameters, under `out`). With
    `average > 0`, what is evaluated, selected and saved is the moving average of
    the weights with that decay per step (`average_weights`), not the last
    weights."""
    if not (math.isfinite(average) and 0 <= average < 1):
        raise ValueError(f"`average` must be in [0, 1), got {average!r}.")
    if not (math.isfinite(lift) and lift >= 0):
        raise ValueError(f"`lift` must be a non-negative float, got {lift!r}.")
    if lift > 0 and readout != "ttfs":
        raise ValueError(
            f"`lift` applies to the 'ttfs' readout only, got lift={lift!r} with "
            f"readout={readout!r}."
        )
    x_train, y_train = yin_yang(split="train")
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    x_val, y_val = yin_yang(split="validation")
    x_test, y_test = yin_yang(split="test")
    batch_size = min(batch_size, len(y_train))
    steps_per_epoch = len(y_train) // batch_size

    net = make_network(jax.random.key(seed), hidden, readout)
    optimizer = make_optimizer(lr, steps_per_epoch, epochs, schedule, clip)
    opt_state = optimizer.init(eqx.filter(net, trainable(net)))
    rng = np.random.default_rng(seed)

    config = dict(
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        hidden=hidden,
        lr=lr,
        train_size=len(y_train),
        readout=readout,
        t_early=T_EARLY,
        t_late=T_LATE,
        t_bias=T_BIAS,
        t_end=T_END,
        tau_mem=TAU_MEM,
        tau_syn=TAU_SYN,
        max_spikes=MAX_SPIKES,
        after_max_spikes=AFTER_MAX_SPIKES,
        tau0=tau0,
        tau1=TAU1,
        alpha=alpha,
        hidden_init=HIDDEN_INIT,
        output_init=OUTPUT_INIT if readout == "ttfs" else READOUT_INIT,
        lr_schedule=(
            "x0.95 every 5 epochs"
            if schedule == "paper"
            else "cosine to 0 over the run"
        ),
        bump=bump,
        bump_threshold=bump_threshold,
        clip=clip,
        lift=lift,
        average=average,
        dtype=str(jnp.dtype(DTYPE)),
    )
    val_acc, val_failed, silent = evaluate(net, x_val, y_val, readout, with_silent=True)
    print(
        f"epoch 0: validation accuracy {val_acc:.3f} (failed {val_failed}); "
        f"{silent} of {hidden} hidden neurons silent on the validation set"
    )
    best = dict(epoch=0, val_accuracy=val_acc)
    best_net = net
    averaged = net
    history = []
    t_start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        losses, accs, failed_total, silent_label_total = [], [], 0, 0
        bar = tqdm(
            list(_batches(rng, len(y_train), batch_size)),
            desc=f"epoch {epoch}/{epochs}",
            disable=not progress,
            leave=False,
        )
        for idx in bar:
            trains = encode(x_train[idx])
            net, opt_state, loss, acc, failed, silent_label = train_step(
                net,
                opt_state,
                optimizer,
                trains,
                jnp.asarray(y_train[idx]),
                readout,
                jnp.asarray(bump, DTYPE),
                (tau0, TAU1, alpha),
                bump_threshold,
                # 0 as a Python float compiles the step without the term.
                jnp.asarray(lift, DTYPE) if lift > 0 else 0.0,
            )
            if average > 0:
                averaged = average_weights(averaged, net, jnp.asarray(average, DTYPE))
            losses.append(float(loss))
            accs.append(float(acc))
            failed_total += int(failed)
            silent_label_total += int(silent_label)
            bar.set_postfix(
                loss=f"{losses[-1]:.3f}", acc=f"{accs[-1]:.3f}", failed=failed_total
            )
        train_time = time.perf_counter() - t0
        evaluated = averaged if average > 0 else net
        val_acc, val_failed, silent = evaluate(
            evaluated, x_val, y_val, readout, with_silent=True
        )
        epoch_time = time.perf_counter() - t0
        row = dict(
            epoch=epoch,
            train_loss=float(np.mean(losses)),
            train_accuracy=float(np.mean(accs)),
            train_failed=failed_total,
            train_silent_label=silent_label_total,
            val_accuracy=val_acc,
            val_failed=val_failed,
            silent_hidden=silent,
            train_time_s=train_time,
            epoch_time_s=epoch_time,
            time_per_batch_s=train_time / max(len(losses), 1),
            wall_time_s=time.perf_counter() - t_start,
        )
        history.append(row)
        if val_acc > best["val_accuracy"]:
            best = dict(epoch=epoch, val_accuracy=val_acc)
            best_net = evaluated
        print(
            f"epoch {epoch}: loss {row['train_loss']:.4f}, train accuracy "
            f"{row['train_accuracy']:.3f}, failed {failed_total}, silent label "
            f"{silent_label_total}; validation "
            f"accuracy {val_acc:.3f} (failed {val_failed}); silent hidden {silent}; "
            f"{epoch_time:.1f} s "
            f"({row['time_per_batch_s']:.2f} s per batch)"
        )
        if out is not None:
            _save(out, best_net, config, history, best, None)
    test_acc, test_failed = evaluate(best_net, x_test, y_test, readout)
    test = dict(accuracy=test_acc, failed=test_failed, epoch=best["epoch"])
    print(
        f"best validation accuracy {best['val_accuracy']:.3f} (epoch {best['epoch']}); "
        f"test accuracy {test_acc:.3f} (failed {test_failed})"
    )
    metrics = _save(out, best_net, config, history, best, test)
    return metrics


def _save(out, net, config, history, best, test) -> dict:
    metrics = dict(config=config, epochs=history, best=best, test=test)
    if out is not None:
        path = pathlib.Path(out)
        path.mkdir(parents=True, exist_ok=True)
        eqx.tree_serialise_leaves(path / "best.eqx", net)
        with open(path / "metrics.json", "w") as f:
            json.dump(metrics, f, indent=1)
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument(
        "--train-size", type=int, default=None, help="use the first N samples only"
    )
    parser.add_argument("--readout", choices=READOUTS, default="ttfs")
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="paper",
        help="learning-rate schedule: the paper's (x0.95 every 5 epochs) or a "
        "cosine decay to 0 over the run",
    )
    parser.add_argument(
        "--bump",
        type=float,
        default=BUMP,
        help="weight bumping: after each step, add this to the input weights of "
        f"every spiking neuron that fired on no sample of the batch (0: off; "
        f"default {BUMP})",
    )
    parser.add_argument(
        "--bump-threshold",
        type=float,
        default=None,
        help="with --bump: when more than this fraction of the hidden layer's "
        "(sample, neuron) pairs of a batch is silent, bump every hidden neuron "
        "silent on some sample (Göltz et al.: 0.3); default: only neurons silent "
        "on the whole batch",
    )
    parser.add_argument(
        "--clip",
        type=float,
        default=None,
        help="clip the gradient to this global norm before Adam (default: no clip)",
    )
    parser.add_argument(
        "--tau0",
        type=float,
        default=TAU0,
        help=f"loss temperature in ms (default {TAU0})",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=ALPHA,
        help=f"weight of the early-label-spike regulariser (default {ALPHA})",
    )
    parser.add_argument(
        "--lift",
        type=float,
        default=LIFT,
        help="weight of the term that raises a silent label neuron's peak voltage "
        f"towards threshold (0: such samples are left out; default {LIFT})",
    )
    parser.add_argument(
        "--average",
        type=float,
        default=AVERAGE,
        help="evaluate and select a moving average of the weights with this decay "
        f"per step (0: the last weights; default {AVERAGE})",
    )
    parser.add_argument("--out", default=None, help="directory for results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be positive, got {args.lr}")
    if not (math.isfinite(args.bump) and args.bump >= 0):
        parser.error(f"--bump must be non-negative, got {args.bump}")
    if args.bump_threshold is not None and not (0 <= args.bump_threshold < 1):
        parser.error(f"--bump-threshold must be in [0, 1), got {args.bump_threshold}")
    if not (math.isfinite(args.tau0) and args.tau0 > 0):
        parser.error(f"--tau0 must be positive, got {args.tau0}")
    if not (math.isfinite(args.alpha) and args.alpha >= 0):
        parser.error(f"--alpha must be non-negative, got {args.alpha}")
    if not (math.isfinite(args.lift) and args.lift >= 0):
        parser.error(f"--lift must be non-negative, got {args.lift}")
    if not (math.isfinite(args.average) and 0 <= args.average < 1):
        parser.error(f"--average must be in [0, 1), got {args.average}")
    if args.clip is not None and not (math.isfinite(args.clip) and args.clip > 0):
        parser.error(f"--clip must be positive, got {args.clip}")
    for name in ("epochs", "batch_size", "hidden", "train_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    train(
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        hidden=args.hidden,
        lr=args.lr,
        train_size=args.train_size,
        readout=args.readout,
        schedule=args.schedule,
        bump=args.bump,
        bump_threshold=args.bump_threshold,
        clip=args.clip,
        tau0=args.tau0,
        alpha=args.alpha,
        lift=args.lift,
        average=args.average,
        out=args.out,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
