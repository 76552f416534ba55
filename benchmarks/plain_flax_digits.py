"""The default digits training written as a plain flax.linen + optax script: the yardstick for jaxcls's wall time.

  python benchmarks/plain_flax_digits.py [--seed 0] [--widths 32,64,128] [--num_epochs 40] ...

It does what `python -m jaxcls.main --config configs/default.py` does, without importing jaxcls: the stratified
1,437 / 360 split of scikit-learn's digits (seed 0), pixels 0..16 scaled to uint8 and resized (Pillow bilinear),
per-channel mean/std of the training images, jaxcls's simple_cnn, AdamW with decay on kernels only, linear warmup
then cosine, random crop with zero padding, label smoothing, the same keys and batch order. One jitted step, no host
sync until the final evaluation.
The flag defaults are configs/default.py's (tests/test_default_recipe.py keeps them equal). Last line: accuracy.
"""

import argparse
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image
from sklearn.datasets import load_digits


def split(labels, test_fraction=0.2, seed=0):
  """Per class, a random share of ceil(fraction * N) test examples (largest remainder), as jaxcls's split."""
  classes, counts = np.unique(labels, return_counts=True)
  num_test = math.ceil(test_fraction * len(labels))
  shares = counts * num_test / len(labels)
  per_class = np.floor(shares).astype(int)
  per_class[np.argsort(-(shares - per_class), kind="stable")[: num_test - per_class.sum()]] += 1
  rng = np.random.default_rng(seed)
  test = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)]))
  return np.setdiff1d(np.arange(len(labels)), test), test


class CNN(nn.Module):
  """Per width: 3x3 conv, batch norm, ReLU, 2x2 max pool while the map is >= 2 px; global mean, dropout, head."""

  widths: tuple
  dropout: float

  @nn.compact
  def __call__(self, x, train):
    for width in self.widths:
      x = nn.Conv(width, (3, 3), padding=[(1, 1), (1, 1)], use_bias=False)(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x))
      if min(x.shape[1:3]) >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x.mean(axis=(1, 2)))
    return nn.Dense(10, name="head")(x)


def load(size):
  """uint8 train/test images [N, size, size, 1] (bilinear Pillow resize), labels, the train pixels' mean and std."""
  digits = load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  if size != images.shape[1]:
    images = np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.Resampling.BILINEAR)) for x in images])
  train, test = split(digits.target)
  pixels = images[train] / 255.0
  mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
  return images[train, ..., None], digits.target[train], images[test, ..., None], digits.target[test], mean, std


def main(a):
  x_train, y_train, x_test, y_test, mean, std = load(a.image_size)
  normalize = lambda x: (x.astype(jnp.float32) - mean * 255.0) * (1.0 / (std * 255.0))

  steps_per_epoch = len(y_train) // a.batch_size
  total = a.num_train_steps if a.num_train_steps > 0 else math.ceil(a.num_epochs * steps_per_epoch)
  decay = optax.cosine_decay_schedule(a.learning_rate, total - a.warmup_steps, alpha=a.end_learning_rate_factor)
  schedule = (
    optax.join_schedules([optax.linear_schedule(0.0, a.learning_rate, a.warmup_steps), decay], [a.warmup_steps])
    if a.warmup_steps
    else decay
  )
  tx = optax.adamw(schedule, weight_decay=a.weight_decay, mask=lambda p: jax.tree.map(lambda v: v.ndim > 1, p))
  model = CNN(tuple(a.widths), a.dropout)
  params_key, dropout_key = jax.random.split(jax.random.key(a.seed, impl="rbg"))
  variables = jax.jit(
    lambda: model.init(
      {"params": params_key, "dropout": dropout_key}, jnp.zeros((1, a.image_size, a.image_size, 1)), train=False
    )
  )()
  params, stats = variables["params"], variables["batch_stats"]
  state = (params, stats, tx.init(params), jax.tree.map(jnp.copy, params), jnp.zeros((), jnp.int32))
  train_key = jax.random.fold_in(jax.random.PRNGKey(a.seed), 1)
  pad = a.crop_padding

  def crop(key, image):  # zero-pad, then cut back at a random offset
    dy, dx = jnp.minimum(jnp.floor(jax.random.uniform(key, (2,)) * (2 * pad + 1)), 2 * pad).astype(jnp.int32)
    return jax.lax.dynamic_slice(jnp.pad(image, ((pad, pad), (pad, pad), (0, 0))), (dy, dx, 0), image.shape)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, images, labels):
    params, stats, opt_state, ema, step = state
    augment_key, dropout_key = jax.random.split(jax.random.fold_in(train_key, step))
    keys = jax.random.split(jax.random.fold_in(augment_key, 0), images.shape[0])
    x = normalize(jax.vmap(crop)(keys, images))
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), a.label_smoothing)

    def loss_fn(params):
      logits, new = model.apply(
        {"params": params, "batch_stats": stats}, x, train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"]
      )
      return optax.softmax_cross_entropy(logits, targets).mean(), new["batch_stats"]

    grads, stats = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if a.ema_decay > 0:
      ema = jax.tree.map(lambda e, p: a.ema_decay * e + (1.0 - a.ema_decay) * p, ema, params)
    return params, stats, opt_state, ema, step + 1

  for step in range(total):
    if step % steps_per_epoch == 0:
      order = np.random.default_rng([a.seed, step // steps_per_epoch]).permutation(len(y_train))
    idx = order[(step % steps_per_epoch) * a.batch_size :][: a.batch_size]
    state = train_step(state, x_train[idx], y_train[idx])
  params, stats, _, ema, _ = state
  eval_params = ema if a.ema_decay > 0 else params
  logits = jax.jit(lambda v, x: model.apply(v, normalize(x), train=False))(
    {"params": eval_params, "batch_stats": stats}, x_test
  )
  predictions = np.asarray(logits).argmax(-1)
  correct = int((predictions == y_test).sum())
  print(f"steps {total}, errors {len(y_test) - correct}/{len(y_test)}")
  print(f"accuracy {correct / len(y_test):.6f}")
  return predictions  # for sweeps that run main() in process


def parse_args(argv=None):
  """The recipe's numbers, defaulting to configs/default.py's."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--image_size", type=int, default=16, help="side the 8x8 digits are resized to")
  p.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[32, 64, 128])
  p.add_argument("--dropout", type=float, default=0.3)
  p.add_argument("--learning_rate", type=float, default=3e-3)
  p.add_argument("--weight_decay", type=float, default=1e-4)
  p.add_argument("--warmup_steps", type=int, default=50)
  p.add_argument("--end_learning_rate_factor", type=float, default=0.0)
  p.add_argument("--crop_padding", type=int, default=2)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--num_epochs", type=float, default=40)
  p.add_argument("--num_train_steps", type=int, default=-1)
  p.add_argument("--label_smoothing", type=float, default=0.1)
  p.add_argument("--ema_decay", type=float, default=0.0)
  return p.parse_args(argv)


if __name__ == "__main__":
  main(parse_args())
