"""A multi-class linear SVM, one-vs-rest, trained in JAX with optax's L-BFGS.

The objective is scikit-learn's `LinearSVC` (loss='squared_hinge', multi_class='ovr') divided by C*N:
  mean_i sum_k max(0, 1 - y_ik (x_i . w_k + b_k))^2  +  ||W||^2 / (2 C N),   y_ik = +1 if label_i == k else -1,
so `c` means what LinearSVC's C means (the intercept is not regularised). The squared hinge is differentiable,
which lets full-batch L-BFGS converge in a few hundred iterations; starting from zeros, the result is
deterministic and needs no learning rate or seed.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from jaxcls.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LinearSVM:
  """Fitted weights [D, K] and intercepts [K]; `scores` are the K one-vs-rest decision values."""

  weights: np.ndarray
  bias: np.ndarray
  iterations: int
  objective: float

  def scores(self, features: np.ndarray) -> np.ndarray:
    """The one-vs-rest decision values [N, K] of features [N, D], as a numpy array."""
    return np.asarray(_scores({"w": self.weights, "b": self.bias}, jnp.asarray(features, jnp.float32)))


@jax.jit
def _scores(params, features):
  return features @ params["w"] + params["b"]


def _objective(params, features, signs, l2):
  margins = 1.0 - signs * _scores(params, features)
  return jnp.mean(jnp.sum(jnp.square(jnp.maximum(margins, 0.0)), axis=1)) + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _minimize(features, signs, l2, tol, *, max_iter: int):
  """L-BFGS (zoom line search) from zeros until the gradient norm is below `tol` or `max_iter` iterations."""
  params = {
    "w": jnp.zeros((features.shape[1], signs.shape[1]), jnp.float32),
    "b": jnp.zeros((signs.shape[1],), jnp.float32),
  }
  fun = functools.partial(_objective, features=features, signs=signs, l2=l2)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
    return optax.apply_updates(params, updates), state

  def keep_going(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
    return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

  params, state = jax.lax.while_loop(keep_going, step, (params, opt.init(params)))
  return params, otu.tree_get(state, "count"), otu.tree_get(state, "value")


def fit(
  features: np.ndarray, labels: np.ndarray, num_classes: int, *, c: float = 1.0, max_iter: int = 500, tol: float = 1e-4
) -> LinearSVM:
  """Trains one-vs-rest squared-hinge SVMs on features [N, D] (standardise them first) and labels [N] in 0..K-1."""
  if c <= 0:
    raise ConfigError(f"classical.svm_c={c} must be positive (larger means less regularisation).")
  if max_iter < 1:
    raise ConfigError(f"classical.svm_max_iter={max_iter} must be a positive integer.")
  features = jnp.asarray(features, jnp.float32)
  labels = np.asarray(labels)
  signs = jnp.asarray(2.0 * (labels[:, None] == np.arange(num_classes)[None, :]) - 1.0, jnp.float32)
  l2 = 1.0 / (c * len(labels))
  params, count, value = _minimize(features, signs, jnp.float32(l2), jnp.float32(tol), max_iter=int(max_iter))
  return LinearSVM(
    weights=np.asarray(params["w"]), bias=np.asarray(params["b"]), iterations=int(count), objective=float(value)
  )
