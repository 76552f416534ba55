"""The jitted train step and state init: pure functions of (state, batch, key), sharded over the 'data' mesh axis.

The eval step is `jaxcls.evaluation.loop.make_eval_step` (evaluation, predict and export share its forward pass).

State is replicated and donated; batches arrive sharded along their first axis. Batch-norm statistics are taken
over the global batch because the step is written for the global array and XLA inserts the cross-device sums.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxcls.core import parallel
from jaxcls.models.forward import DTYPES, model_variables, normalize
from jaxcls.training import step_metrics
from jaxcls.training.state import TrainState


def _apply(model: nn.Module, params, batch_stats, images, *, train: bool, dropout_key=None):
  variables = model_variables({"params": params, "batch_stats": batch_stats})
  if not train:
    return model.apply(variables, images, train=False), batch_stats
  logits, updates = model.apply(
    variables, images, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"] if batch_stats else []
  )
  return logits, updates.get("batch_stats", batch_stats)


def _all_finite(tree) -> jax.Array:
  """One boolean: every element of every leaf is finite (exact, unlike a norm, which overflows first)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def make_train_step(
  model: nn.Module,
  task,
  tx: optax.GradientTransformation,
  schedule: Callable,
  augment: Callable,
  *,
  mean,
  std,
  dtype: str,
  ema_decay: float,
  mesh,
  steps_per_chunk: int | None = None,
) -> Callable:
  """Returns train_step(state, acc, batch, key) -> (state, acc), jitted with shardings and donation.

  With `steps_per_chunk=k`, `batch` holds k steps' batches stacked, [k, B, ...] (`data.prefetch.chunks`), and
  the step trains on row `state.step % k`: batches then cross to the devices k at a time, with no per-step index.

  `augment(key, images, labels, mask) -> (images, labels)` is `jaxcls.data.augment.build(...)`: uint8 images in
  and out, so the step normalises exactly once, after it.

  `acc` is the window of `jaxcls.training.step_metrics` (start from `step_metrics.zeros(names)` placed on the devices):
  the step adds its scalars to it on the device, so the loop fetches metrics only at its log points. The first step
  whose loss or gradient norm is not finite is recorded in `acc`, and the loop stops at its next check point. The
  step itself checks nothing else and selects nothing: a whole-state finiteness check and a select per array
  would add ~70 small kernels to every step (about 5% of a small CNN's step on a CPU, more of its compile time).
  Parameters that an update overflowed make the next step's loss non-finite, and the loop checks the whole state
  at every check point before anything is written (`make_state_check`), so a checkpoint never holds a NaN or an
  infinity.
  """
  compute_dtype = DTYPES[dtype]

  def train_step(state: TrainState, acc: dict, batch: dict, key: jax.Array):
    if steps_per_chunk is not None:
      row = state.step % steps_per_chunk
      batch = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, row, 0, keepdims=False), batch)
    step_key = jax.random.fold_in(key, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    # Augmentations keep uint8 images (labels may become soft, [B, K]); normalisation happens here, once.
    images, labels = augment(augment_key, batch["image"], batch["label"], batch["mask"])
    images = normalize(images, mean, std, compute_dtype)
    mask = batch["mask"].astype(jnp.float32)
    num_valid = jnp.maximum(mask.sum(), 1.0)

    def loss_fn(params):
      logits, new_stats = _apply(model, params, state.batch_stats, images, train=True, dropout_key=dropout_key)
      per_example = task.loss(logits, labels)
      return jnp.sum(per_example * mask) / num_valid, (logits, new_stats)

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    new_ema = state.ema_params
    if state.ema_params:
      new_ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, new_params)
    new_state = state.replace(
      step=state.step + 1, params=new_params, batch_stats=new_stats, opt_state=new_opt_state, ema_params=new_ema
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": schedule(state.step)}
    for name, values in task.train_metrics(logits, labels).items():
      metrics[name] = jnp.sum(values * mask) / num_valid
    return new_state, step_metrics.add(acc, metrics, finite, state.step + 1)

  return jax.jit(
    train_step,
    in_shardings=(
      parallel.replicated(mesh),
      parallel.replicated(mesh),
      parallel.batch_sharded(mesh) if steps_per_chunk is None else parallel.chunk_sharded(mesh),
      parallel.replicated(mesh),
    ),
    out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
    donate_argnums=(0,),
  )


def make_state_check(mesh) -> Callable[[TrainState], jax.Array]:
  """Returns state_finite(state) -> one replicated boolean: every parameter, batch statistic, moving average and
  optimizer value is finite (exact, per element). The loop runs it at check points, before an evaluation or a
  checkpoint: the update itself can overflow (a huge learning rate on finite gradients) at the last step before one.
  """

  def state_finite(state: TrainState) -> jax.Array:
    arrays = (state.params, state.batch_stats, state.ema_params, state.opt_state)
    return _all_finite([x for x in jax.tree.leaves(arrays) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)])

  return jax.jit(state_finite, out_shardings=parallel.replicated(mesh))


def make_init(
  model: nn.Module, tx: optax.GradientTransformation, *, image_shape, dtype: str, use_ema: bool, mesh
) -> Callable[[jax.Array], TrainState]:
  """Returns init(key) -> a replicated TrainState, built directly on the devices."""
  from jaxcls.training import state as state_lib

  def init(key):
    params_key, dropout_key = jax.random.split(key)
    dummy = jnp.zeros((1,) + tuple(image_shape), DTYPES[dtype])
    variables = model.init({"params": params_key, "dropout": dropout_key}, dummy, train=False)
    return state_lib.create(variables, tx, use_ema)

  return jax.jit(init, out_shardings=parallel.replicated(mesh))
