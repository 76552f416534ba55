"""The contract every data source meets: `DatasetInfo`, the `Dataset` base class and the `SOURCES` registry.

The trainer only sees this interface, so a new source is one module that registers a loader here.
"""

import abc
import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.core.registry import Registry

# The built-in sources: name -> the module whose `load` is registered under it. Each is imported on first use,
# so `import jaxcls.data` (and predict, which needs none of them) does not pay for the others' imports.
BUILTIN_SOURCES = {
  "arrays": "jaxcls.data.sources.arrays",
  "digits": "jaxcls.data.sources.digits",
  "folder": "jaxcls.data.sources.folder",
  "idx": "jaxcls.data.sources.idx",
  "synthetic": "jaxcls.data.sources.synthetic",
  "tfds": "jaxcls.data.sources.tfds_source",
}


class LazySources(Registry):
  """The `SOURCES` registry: a Registry whose built-in entries are imported on first lookup.

  Listings and the unknown-name error show every built-in name without importing any; `get` imports the one
  asked for. Registering one's own source under a built-in name imports that built-in first, so the clash is
  refused at registration, as when every built-in was imported up front.
  """

  def __init__(self, kind: str, builtin: dict[str, str]):
    super().__init__(kind)
    self._builtin = dict(builtin)

  def _load(self, name: str) -> None:
    if name in self._builtin and name not in self._entries:
      loader = importlib.import_module(self._builtin[name]).load  # its import registers it
      self._entries.setdefault(name, loader)  # also when its module was imported before the entry was dropped

  def register(self, name: str) -> Callable[[Any], Any]:
    """`Registry.register`; an object from another module filed under a built-in name imports that built-in
    first, so the clash is refused now rather than at the built-in's first use."""
    decorate = super().register(name)

    def register_lazily(obj):
      if name in self._builtin and getattr(obj, "__module__", None) != self._builtin[name]:
        self._load(name)
      return decorate(obj)

    return register_lazily

  def get(self, name: str) -> Any:
    """The source `name`, importing its module if it is a built-in not imported yet."""
    self._load(name)
    return super().get(name)

  def names(self) -> list[str]:
    """Every registered and built-in name, sorted (built-ins are not imported to list them)."""
    return sorted(set(self._entries) | set(self._builtin))

  def __contains__(self, name: str) -> bool:
    return name in self._entries or name in self._builtin


# name -> loader(config, *, process_index, process_count) -> Dataset; `jaxcls.register_source` files one's own
SOURCES = LazySources("dataset", BUILTIN_SOURCES)

Batch = dict  # {"image": uint8 [b, h, w, c], "label": int32 [b], "mask": bool [b]}, numpy, process-local


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model, the task and the report need to know about a dataset.

  `image_shape` is (height, width, channels) as the model sees it (after any resize). `mean` and `std` are per
  channel in [0, 1] units (one value is used for every channel): the device normalises with (x / 255 - mean) / std.
  """

  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  num_train: int
  num_eval: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  train_class_counts: tuple[int, ...] | None = None

  def __post_init__(self):
    # Accept lists and numpy scalars from users, but store hashable plain tuples.
    fix = lambda name, value: object.__setattr__(self, name, value)
    fix("class_names", tuple(str(c) for c in self.class_names))
    fix("image_shape", tuple(int(d) for d in self.image_shape))
    fix("mean", tuple(float(m) for m in self.mean))
    fix("std", tuple(float(s) for s in self.std))
    if self.train_class_counts is not None:
      fix("train_class_counts", tuple(int(c) for c in self.train_class_counts))
    if len(self.class_names) != self.num_classes:
      raise DataError(
        f"DatasetInfo has {len(self.class_names)} class_names for num_classes={self.num_classes}; "
        "give exactly one name per class."
      )
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise DataError(f"DatasetInfo.image_shape={self.image_shape} is invalid; use (height, width, channels).")
    channels = self.image_shape[2]
    for name in ("mean", "std"):  # one value stands for every channel
      if len(getattr(self, name)) == 1:
        fix(name, getattr(self, name) * channels)
    if len(self.mean) != channels or len(self.std) != channels:
      raise DataError(f"DatasetInfo mean={self.mean} and std={self.std} need one value per channel ({channels}).")
    if min(self.std) <= 0:
      raise DataError(f"DatasetInfo std={self.std} must be positive.")


class Dataset(abc.ABC):
  """A source of process-local numpy batches for training (infinite, resumable) and evaluation (finite, padded).

  Subclasses set `info`, `process_index` and `process_count` and implement the three abstract methods.
  """

  info: DatasetInfo
  process_index: int = 0
  process_count: int = 1
  # One group name per eval example in split order (site, scanner, ...), for per-group metrics; None = no groups.
  eval_groups = None

  def local_batch_size(self, global_batch_size: int) -> int:
    """This process's share of a global batch; every process gets the same share."""
    if global_batch_size < 1 or global_batch_size % self.process_count:
      raise ConfigError(
        f"Global batch size {global_batch_size} must be a positive multiple of the process count "
        f"({self.process_count}); change batch_size or eval_batch_size."
      )
    return global_batch_size // self.process_count

  def steps_per_epoch(self, global_batch_size: int) -> int:
    """Full global batches in one pass over the training split (the remainder is dropped)."""
    self.local_batch_size(global_batch_size)
    steps = self.info.num_train // global_batch_size
    if steps == 0:
      raise DataError(
        f"Batch size {global_batch_size} is larger than the training split ({self.info.num_train} "
        "examples); lower batch_size."
      )
    return steps

  @abc.abstractmethod
  def train_batches(self, global_batch_size: int, *, start_step: int = 0, seed: int = 0) -> Iterator[Batch]:
    """Yields this process's share of global batches `start_step`, `start_step + 1`, ... forever."""

  def train_chunks(
    self, global_batch_size: int, steps_per_chunk: int, *, start_step: int = 0, seed: int = 0
  ) -> Iterator[Batch] | None:
    """The batches of `train_batches` stacked `steps_per_chunk` at a time, as `data.prefetch.chunks` stacks them
    ([k, local batch, ...], chunk c holding steps c*k ... c*k+k-1, the steps of a resumed run's first chunk before
    `start_step` filled with copies of its first batch), when the source has a faster way to make them than
    stacking its batches; None otherwise (the default), and the loop stacks them."""
    del global_batch_size, steps_per_chunk, start_step, seed
    return None

  @abc.abstractmethod
  def eval_batches(self, global_batch_size: int) -> Iterator[Batch]:
    """Yields `num_eval_batches` padded batches; over all processes every eval example appears once unmasked."""

  @abc.abstractmethod
  def num_eval_batches(self, global_batch_size: int) -> int:
    """How many batches `eval_batches` yields, the same on every process (so collective steps line up)."""


def check_stream_args(start_step: int, seed: int) -> None:
  """Rejects values that would make the (seed, step) -> batch mapping undefined."""
  if start_step < 0:
    raise ConfigError(f"start_step={start_step} must be >= 0.")
  if seed < 0:
    raise ConfigError(f"seed={seed} must be >= 0 (it seeds numpy's generator).")
