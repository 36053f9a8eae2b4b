"""The Yin-Yang example (`examples/yin_yang.py`) trains: a few steps on a small
subset lower the loss, and its training step compiles once."""

import importlib.util
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
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


def test_training_reduces_loss_and_compiles_once(example):
    x, y = yin_yang(split="train")
    x, y = x[:64], jnp.asarray(y[:64])
    trains = example.encode(x)
    net = example.make_network(jax.random.key(0), 20)
    optimizer = example.make_optimizer(1e-2, steps_per_epoch=1, epochs=1)
    opt_state = optimizer.init(eqx.filter(net, example.trainable(net)))

    traces_before = example.TRACE_COUNT["train_step"]
    losses = []
    for _ in range(6):
        # Each step returns the loss of the parameters it starts from.
        net, opt_state, loss, accuracy, failed = example.train_step(
            net, opt_state, optimizer, trains, y
        )
        assert int(failed) == 0
        assert jnp.isfinite(loss) and 0 <= float(accuracy) <= 1
        losses.append(float(loss))
    # Traced once for the first call; the following calls reuse it.
    assert example.TRACE_COUNT["train_step"] - traces_before == 1
    assert losses[-1] < losses[0], losses
    # Only the weights are trained; the neuron parameters are unchanged.
    assert jnp.array_equal(net.layers[0].dynamics.tau_mem, example.TAU_MEM)


def test_train_step_is_filter_jit(example):
    assert isinstance(example.train_step, type(eqx.filter_jit(lambda: None)))
