"""Train a spike-count classifier on scikit-learn's digits with surrogate gradients.

Each 8x8 image (64 pixels scaled to [0, 1]) is held as a constant input over a few
intervals. A hidden layer of LIF neurons feeds its per-interval spike counts to an
output layer of 10 LIF neurons; the predicted class is the output neuron with the
most spikes. Counts are exact in the forward pass; their gradient is the layer's
surrogate. Training is the usual Equinox + optax loop.

    pip install -e ".[examples]" && python examples/train_counts.py
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import snode_jax as sj

N_INTERVALS, INTERVAL = 6, 1.5


class CountClassifier(eqx.Module):
    hidden: sj.SpikingODELayer
    output: sj.SpikingODELayer

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        dyn = sj.ODELIFDynamics(tau_mem=10.0, v_threshold=1.0, v_reset=0.0)
        self.hidden = sj.SpikingODELayer(64, 128, dyn, key=k1)
        self.output = sj.SpikingODELayer(128, 10, dyn, key=k2)

    def __call__(self, image):
        x = jnp.broadcast_to(image, (N_INTERVALS, image.shape[0]))
        hidden_counts = self.hidden.forward(x, INTERVAL)
        out_counts = self.output.forward(hidden_counts, INTERVAL)
        return out_counts.sum(0)  # spikes per class


def loss_fn(model, images, labels):
    counts = jax.vmap(model)(images)
    logits = counts  # one spike = one nat of evidence
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@eqx.filter_jit
def predict_counts(model, images):
    # (The model an argument: compiled once, for every model of this structure.)
    return jax.vmap(model)(images)


def accuracy(model, images, labels):
    counts = predict_counts(model, images)
    return float(jnp.mean(jnp.argmax(counts, axis=1) == labels))


def main():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.3, random_state=0, stratify=y
    )
    logreg = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    print(
        f"non-spiking logistic regression test accuracy: {logreg.score(x_test, y_test):.3f}"
    )

    model = CountClassifier(jax.random.key(0))
    epochs, batch = 40, 64
    steps = epochs * (len(x_train) // batch)
    optim = optax.adamw(optax.cosine_decay_schedule(3e-3, steps), weight_decay=1e-2)
    opt_state = optim.init(eqx.filter(model, eqx.is_inexact_array))

    @eqx.filter_jit
    def train_step(model, opt_state, images, labels):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, images, labels)
        updates, opt_state = optim.update(
            grads, opt_state, eqx.filter(model, eqx.is_inexact_array)
        )
        return eqx.apply_updates(model, updates), opt_state, loss

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            model, opt_state, loss = train_step(
                model, opt_state, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
            )
            losses.append(float(loss))
        if epoch % 5 == 4:
            acc = accuracy(model, jnp.asarray(x_test), jnp.asarray(y_test))
            print(
                f"epoch {epoch + 1:3d}   train loss {np.mean(losses):.4f}   "
                f"test accuracy {acc:.3f}   ({time.perf_counter() - t0:.0f} s)"
            )
    train_acc = accuracy(model, jnp.asarray(x_train), jnp.asarray(y_train))
    test_acc = accuracy(model, jnp.asarray(x_test), jnp.asarray(y_test))
    print(
        f"spiking count classifier: train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f}"
    )


if __name__ == "__main__":
    main()
