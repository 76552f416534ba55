"""`build(config)`: the one entry point from a config to a `Dataset`, with the config's overrides applied."""

import dataclasses

from jaxcls.core.errors import ConfigError
from jaxcls.data.base import SOURCES, Dataset, DatasetInfo


def build(config, *, process_index: int | None = None, process_count: int | None = None) -> Dataset:
  """The dataset `config.dataset.name`, serving this process's share of every batch.

  `process_index` / `process_count` default to JAX's (tests pass them to act as one of several hosts).
  """
  import jax  # pylint: disable=g-import-not-at-top  (not at import: `import jaxcls.data` stays free of jax)

  process_index = jax.process_index() if process_index is None else int(process_index)
  process_count = jax.process_count() if process_count is None else int(process_count)
  if not 0 <= process_index < process_count:
    raise ConfigError(f"process_index={process_index} must be in 0..{process_count - 1}.")
  eval_batch_size = config.eval_batch_size or config.batch_size
  for key, value in (("batch_size", config.batch_size), ("eval_batch_size", eval_batch_size)):
    if value < 1 or value % process_count:
      raise ConfigError(f"{key}={value} must be a positive multiple of the process count ({process_count}).")
  source = SOURCES.get(config.dataset.name)
  dataset = source(config, process_index=process_index, process_count=process_count)
  dataset.info = override_info(dataset.info, config.dataset)
  return dataset


def override_info(info: DatasetInfo, dataset_config) -> DatasetInfo:
  """`info` with `dataset.class_names`, `.mean` and `.std` from the config where they are set."""
  changes = {}
  if dataset_config.class_names is not None:
    names = tuple(str(c) for c in dataset_config.class_names)
    if len(names) != info.num_classes:
      raise ConfigError(
        f"dataset.class_names has {len(names)} names but the dataset has {info.num_classes} "
        "classes; give one name per class."
      )
    changes["class_names"] = names
  channels = info.image_shape[2]
  for key in ("mean", "std"):
    value = dataset_config[key]
    if value is None:
      continue
    value = tuple(float(v) for v in value)
    if len(value) == 1:
      value *= channels
    if len(value) != channels:
      raise ConfigError(_channel_mismatch(key, value, channels, dataset_config.get("channels")))
    if key == "std" and min(value) <= 0:
      raise ConfigError(f"dataset.std={dataset_config[key]} must be positive.")
    changes[key] = value
  return dataclasses.replace(info, **changes) if changes else info


def _channel_mismatch(key: str, value: tuple[float, ...], channels: int, configured) -> str:
  """One sentence for a mean/std whose length is not the images' channel count, with the two ways to fix it."""
  given = f"dataset.{key}={value} has {len(value)} values"
  if channels == 1:
    average = round(sum(value) / len(value), 3)
    why = "dataset.channels=0 found grayscale files" if configured == 0 else "dataset.channels=1, grayscale"
    return (
      f"{given}, but the images are read with 1 channel ({why}); give one value, e.g. "
      f"dataset.{key}=({average},) (the average of those), or set dataset.channels=3 to read them as RGB."
    )
  return (
    f"{given}, but the images have {channels} channels (dataset.channels={channels}); give {channels} values "
    f"(one per channel) or one value for all of them."
  )
