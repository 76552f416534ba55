"""A fixed, stratified held-out split for sources that ship one array of examples (digits, a single .npz).

The split depends only on `dataset.split_seed`, never on `seed`, so runs with different seeds evaluate on the
same examples and their accuracies can be compared.
"""

import math

import numpy as np

from jaxcls.core.errors import ConfigError, DataError


def held_out_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train_indices, test_indices), sorted; each class keeps its share of the ceil(fraction * N) test examples.

  Per-class test counts are the proportional shares rounded by largest remainder, so the total is exact and
  every class is represented as evenly as integer counts allow.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ConfigError(f"dataset.test_fraction={test_fraction} must be strictly between 0 and 1.")
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  num_test = math.ceil(test_fraction * len(labels))
  if num_test >= len(labels):
    raise ConfigError(
      f"dataset.test_fraction={test_fraction} leaves no training examples out of {len(labels)}; lower it."
    )
  shares = counts * num_test / len(labels)
  per_class = np.floor(shares).astype(int)
  remainder_order = np.argsort(-(shares - per_class), kind="stable")
  per_class[remainder_order[: num_test - per_class.sum()]] += 1
  rng = np.random.default_rng(seed)
  test = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, per_class)]
  test = np.sort(np.concatenate(test))
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, test


def held_out_parts(strata: np.ndarray, dataset_config) -> dict[str, np.ndarray]:
  """{'train', 'test', and 'val' when dataset.val_fraction > 0: sorted indices}, stratified by `strata`.

  The test split depends on `split_seed` only and the validation split is carved from the rest with
  `split_seed + 1`, so adding a validation split never changes the test split.
  """
  ds = dataset_config
  train, test = held_out_split(strata, ds.test_fraction, ds.split_seed)
  parts = {"test": test}
  if ds.val_fraction > 0:
    fraction = ds.val_fraction / (1.0 - ds.test_fraction)
    if not 0 < fraction < 1:
      raise ConfigError(
        f"dataset.val_fraction={ds.val_fraction} with test_fraction={ds.test_fraction} leaves no "
        "training images; lower them."
      )
    keep, val = held_out_split(np.asarray(strata)[train], fraction, ds.split_seed + 1)
    parts["val"], train = train[val], train[keep]
  parts["train"] = train
  return parts


def select_indices(dataset_config, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(train_indices, eval_indices) for `train_split` / `eval_split` 'train' or 'test' of a single array."""
  labels = np.asarray(labels)
  # Multi-label sets are stratified by their first positive class (a row without one counts as class 0).
  strata = labels if labels.ndim == 1 else np.argmax(labels, axis=1)
  train, test = held_out_split(strata, dataset_config.test_fraction, dataset_config.split_seed)
  parts = {"train": train, "test": test}
  chosen = []
  for key in ("train_split", "eval_split"):
    name = dataset_config[key]
    if name not in parts:
      raise ConfigError(
        f"dataset.{key}={name!r} is not a split of this single-array source; use 'train' or "
        "'test' (the held-out dataset.test_fraction)."
      )
    chosen.append(parts[name])
  return chosen[0], chosen[1]


def check_labels(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Labels as [N] integers or [N, K] multi-hot rows, one per image; a DataError otherwise."""
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if len(images) != len(labels) or labels.ndim not in (1, 2):
    raise DataError(
      f"There are {len(images)} images but labels of shape {np.shape(labels)}; give one integer "
      "label per image, or one multi-hot row [K] per image."
    )
  return labels


def select(dataset_config, images: np.ndarray, labels: np.ndarray):
  """(train_images, train_labels, eval_images, eval_labels) for `train_split` / `eval_split` 'train' or 'test'."""
  labels = check_labels(images, labels)
  train_idx, eval_idx = select_indices(dataset_config, labels)
  return images[train_idx], labels[train_idx], images[eval_idx], labels[eval_idx]
