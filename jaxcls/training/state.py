"""The whole training state as one pytree, so steps stay pure and checkpoints are one object."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Randomness is not stored: each step's key is `fold_in(key(seed), step)`, so `step` alone restores it.
  `ema_params` is an empty dict when the moving average is off.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any


def create(variables: dict, tx: optax.GradientTransformation, use_ema: bool) -> TrainState:
  """The state at step 0: fresh optimizer state, and the moving average starting at the initial parameters."""
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    ema_params=jax.tree.map(jnp.copy, params) if use_ema else {},
  )


def eval_params(state: TrainState) -> Any:
  """The parameters to evaluate and serve: the moving average when kept, else the raw ones."""
  return state.ema_params if state.ema_params else state.params
