"""Shared type aliases for public signatures."""

from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PyTree

RealScalarLike: TypeAlias = float | int | Float[ArrayLike, ""]
FloatScalar: TypeAlias = Float[Array, ""]
NeuronFloat: TypeAlias = Float[Array, " n_neurons"]
NeuronInt: TypeAlias = Int[Array, " n_neurons"]
NeuronBool: TypeAlias = Bool[Array, " n_neurons"]
State: TypeAlias = PyTree[Float[Array, " n_neurons"]]
"""A neuron state: a PyTree whose leaves have the neuron axis leading."""
Inputs: TypeAlias = Float[ArrayLike, "time n_inputs"]
Counts: TypeAlias = Int[Array, "time n_neurons"]
SpikeTimes: TypeAlias = Float[Array, "n_neurons max_spikes"]
