"""k-nearest-neighbour classification of feature vectors, in JAX, with bounded memory.

Queries are processed `batch_size` at a time and the training set in fixed chunks whose nearest neighbours are
merged into a running top-k, so memory is O(batch_size * chunk) whatever the number of training examples.
Predictions (`scores.argmax(-1)`) match scikit-learn's `KNeighborsClassifier(n_neighbors=k, metric=...)` with
uniform weights: vote ties go to the smallest class index.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcls.core.errors import ConfigError, DataError

METRICS = ("euclidean", "cosine")
_TRAIN_CHUNK = 16384  # Training examples compared with a query batch at once: 1024 x 16384 float32 is 64 MiB.


def knn_scores(
  train_features,
  train_labels,
  query_features,
  *,
  k: int,
  num_classes: int,
  metric: str = "euclidean",
  batch_size: int = 1024,
) -> np.ndarray:
  """The fraction of each query's k nearest training examples in each class.

  Args:
    train_features: [N, D] features of the labelled examples.
    train_labels: [N] integer labels in [0, num_classes).
    query_features: [Q, D] features to classify.
    k: number of neighbours, 1 <= k <= N.
    num_classes: number of classes (columns of the result).
    metric: 'euclidean' or 'cosine' (1 - cosine similarity; zero vectors are treated as orthogonal to all).
    batch_size: queries per device call; bounds memory together with the internal training-set chunk.

  Returns:
    float32 [Q, num_classes] array whose rows sum to 1; predictions are `scores.argmax(-1)`.
  """
  train_features = np.asarray(train_features, np.float32)
  train_labels = np.asarray(train_labels)
  query_features = np.asarray(query_features, np.float32)
  _check_inputs(train_features, train_labels, query_features, k, num_classes, metric, batch_size)
  train_labels = train_labels.astype(np.int32)

  n = train_features.shape[0]
  chunk = min(_TRAIN_CHUNK, n)
  num_chunks = -(-n // chunk)
  padded = num_chunks * chunk
  train_valid = np.arange(padded) < n
  train_features = np.pad(train_features, ((0, padded - n), (0, 0)))
  train_labels = np.pad(train_labels, (0, padded - n))
  if metric == "cosine":
    train_features = _unit_rows(train_features)
    query_features = _unit_rows(query_features)

  chunks = (
    jnp.asarray(train_features.reshape(num_chunks, chunk, -1)),
    jnp.asarray(train_labels.reshape(num_chunks, chunk)),
    jnp.asarray(train_valid.reshape(num_chunks, chunk)),
  )
  num_queries = query_features.shape[0]
  batch_size = min(batch_size, max(num_queries, 1))
  out = []
  for start in range(0, num_queries, batch_size):
    queries = query_features[start : start + batch_size]
    valid = queries.shape[0]
    queries = np.pad(queries, ((0, batch_size - valid), (0, 0)))  # One compiled shape for every batch.
    scores = _batch_scores(jnp.asarray(queries), chunks, k=k, num_classes=num_classes, metric=metric)
    out.append(np.asarray(scores)[:valid])
  if not out:
    return np.zeros((0, num_classes), np.float32)
  return np.concatenate(out)


def _check_inputs(train_features, train_labels, query_features, k, num_classes, metric, batch_size):
  if metric not in METRICS:
    raise ConfigError(f"k-NN metric {metric!r} is unknown; use one of {METRICS}.")
  if train_features.ndim != 2 or query_features.ndim != 2:
    raise DataError(
      f"k-NN features must be 2-D [examples, dims]; got train {train_features.shape} and query {query_features.shape}."
    )
  if train_features.shape[1] != query_features.shape[1]:
    raise DataError(
      f"k-NN train features have {train_features.shape[1]} dims but query features have "
      f"{query_features.shape[1]}; extract both with the same model."
    )
  if train_labels.shape != (train_features.shape[0],):
    raise DataError(
      f"k-NN train labels have shape {train_labels.shape}; expected ({train_features.shape[0]},), "
      "one integer label per train feature row."
    )
  if not np.issubdtype(train_labels.dtype, np.integer):
    raise DataError(f"k-NN train labels must be integers, got dtype {train_labels.dtype}.")
  if num_classes < 1:
    raise ConfigError(f"k-NN num_classes={num_classes} must be at least 1.")
  if train_labels.size and (train_labels.min() < 0 or train_labels.max() >= num_classes):
    raise DataError(
      f"k-NN train labels range over [{train_labels.min()}, {train_labels.max()}], outside "
      f"[0, {num_classes}); pass the dataset's num_classes."
    )
  n = train_features.shape[0]
  if not isinstance(k, (int, np.integer)) or k < 1 or k > n:
    raise ConfigError(
      f"k-NN k={k} must be an integer between 1 and the {n} training examples; "
      f"use a smaller k or more training examples."
    )
  if batch_size < 1:
    raise ConfigError(f"k-NN batch_size={batch_size} must be positive.")


def _unit_rows(x: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  return x / np.where(norms > 0, norms, 1.0)


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "metric"))
def _batch_scores(queries, chunks, *, k, num_classes, metric):
  """Class vote fractions for one batch of queries, scanning the training set chunk by chunk."""
  batch = queries.shape[0]
  query_sq = jnp.sum(queries * queries, axis=1, keepdims=True)

  def merge(carry, chunk):
    best_dist, best_labels = carry
    features, labels, valid = chunk
    dots = jnp.matmul(queries, features.T, precision=jax.lax.Precision.HIGHEST)
    if metric == "cosine":
      dist = 1.0 - dots
    else:  # Squared euclidean distance orders neighbours like the euclidean distance.
      dist = jnp.maximum(query_sq - 2.0 * dots + jnp.sum(features * features, axis=1)[None, :], 0.0)
    dist = jnp.where(valid[None, :], dist, jnp.inf)
    # Candidates seen earlier come first, so among equal distances top_k keeps the lower training index.
    all_dist = jnp.concatenate([best_dist, dist], axis=1)
    all_labels = jnp.concatenate([best_labels, jnp.broadcast_to(labels, dist.shape)], axis=1)
    _, idx = jax.lax.top_k(-all_dist, k)
    return (jnp.take_along_axis(all_dist, idx, axis=1), jnp.take_along_axis(all_labels, idx, axis=1)), None

  init = (jnp.full((batch, k), jnp.inf, jnp.float32), jnp.zeros((batch, k), jnp.int32))
  (_, neighbour_labels), _ = jax.lax.scan(merge, init, chunks)
  return jax.nn.one_hot(neighbour_labels, num_classes, dtype=jnp.float32).mean(axis=1)
