"""Fit weights so that each output neuron fires at given target times.

A chronotron-style task: a fixed input pattern drives 4 LIF neurons; the targets are
the spike times of a "teacher" layer with other weights, so an exact fit exists.
The loss is the mean squared spike-time error (ms^2) plus a penalty on the spike
counts (surrogate gradient) that only matters while the number of spikes differs.
Adam brings the loss down; L-BFGS, on the exact spike-time gradients, then takes
it about four orders of magnitude further (from about 5e-4 to about 3e-8 ms^2 in
200 steps here; it stops early below 1e-14).

    python examples/fit_spike_times.py
"""

import equinox as eqx
import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import snode_jax as sj  # noqa: E402

N_INPUTS, N_NEURONS, N_INTERVALS, INTERVAL, MAX_SPIKES = 16, 4, 20, 1.0, 16


def spike_loss(layer, inputs, target_times, target_counts):
    sol = layer.simulate(inputs, INTERVAL, max_spikes=MAX_SPIKES)
    both = jnp.isfinite(sol.spike_times) & jnp.isfinite(target_times)
    diff = jnp.where(both, sol.spike_times - jnp.where(both, target_times, 0.0), 0.0)
    timing = jnp.sum(diff**2) / jnp.maximum(jnp.sum(both), 1)
    count_error = jnp.sum((sol.counts.sum(0) - target_counts) ** 2)
    return timing + count_error, (sol, both)


def main():
    key_teacher, key_student, key_x = jax.random.split(jax.random.key(3), 3)
    dyn = sj.ODELIFDynamics(tau_mem=10.0, v_threshold=1.0, v_reset=0.0)
    teacher = sj.SpikingODELayer(N_INPUTS, N_NEURONS, dyn, key=key_teacher)
    teacher = eqx.tree_at(lambda m: m.weight, teacher, jnp.abs(teacher.weight))
    inputs = 0.2 * jax.random.uniform(key_x, (N_INTERVALS, N_INPUTS))
    target = teacher.simulate(inputs, INTERVAL, max_spikes=MAX_SPIKES)
    target_counts = target.counts.sum(0)
    print(f"target spike counts per neuron: {np.asarray(target_counts, int)}")

    # The student starts from perturbed teacher weights.
    noise = jax.random.normal(key_student, teacher.weight.shape)
    student = eqx.tree_at(lambda m: m.weight, teacher, teacher.weight + 0.05 * noise)

    # Train the weights. Adam brings the loss down fast; L-BFGS (also from optax),
    # on the exact spike-time gradients, then takes it much further.
    def loss_of_weight(weight):
        model = eqx.tree_at(lambda m: m.weight, student, weight)
        return spike_loss(model, inputs, target.spike_times, target_counts)[0]

    adam = optax.adam(3e-3)

    @eqx.filter_jit
    def adam_step(weight, opt_state):
        loss, grad = eqx.filter_value_and_grad(loss_of_weight)(weight)
        updates, opt_state = adam.update(grad, opt_state, weight)
        return eqx.apply_updates(weight, updates), opt_state, loss

    lbfgs = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_of_weight)

    @eqx.filter_jit
    def lbfgs_step(weight, opt_state):
        loss, grad = value_and_grad(weight, state=opt_state)
        updates, opt_state = lbfgs.update(
            grad, opt_state, weight, value=loss, grad=grad, value_fn=loss_of_weight
        )
        return optax.apply_updates(weight, updates), opt_state, loss

    weight = student.weight
    opt_state = adam.init(weight)
    for step in range(300):
        weight, opt_state, loss = adam_step(weight, opt_state)
        if step % 50 == 0:
            print(f"adam   step {step:4d}   loss {float(loss):.3e} ms^2")
    opt_state = lbfgs.init(weight)
    for step in range(200):
        weight, opt_state, loss = lbfgs_step(weight, opt_state)
        if step % 10 == 0:
            print(f"l-bfgs step {step:4d}   loss {float(loss):.3e} ms^2")
        if loss < 1e-14:
            break
    student = eqx.tree_at(lambda m: m.weight, student, weight)

    loss, (sol, both) = spike_loss(student, inputs, target.spike_times, target_counts)
    err = np.abs(np.asarray(sol.spike_times - target.spike_times)[np.asarray(both)])
    counts_match = bool(np.all(np.asarray(sol.counts) == np.asarray(target.counts)))
    print(f"final loss {float(loss):.3e} ms^2 (target below 1e-6)")
    print(f"max spike-time error {err.max():.3e} ms over {err.size} spikes")
    print(f"spike counts equal to the targets in every interval: {counts_match}")


if __name__ == "__main__":
    main()
