"""Augmentation on the device: pure JAX functions run inside the jitted train step.

`config.augment` is an ordered list of ops with keyword parameters, as a '|'-separated string or a list of
strings, e.g. `'random_resized_crop(scale=(0.35, 1))|flip_lr|color_jitter(brightness=0.4)|mixup(alpha=0.2)'`.
`build(spec, num_classes)` returns `fn(key, images, labels, mask=None) -> (images, labels)`:

- images are uint8 [B, H, W, C] in and out (every op rounds back to uint8); the train step normalises them
  afterwards with the dataset's mean and std (`dataset.mean` / `.std`), so the op list never normalises;
- labels are int [B] in; after `mixup` or `cutmix` they are soft float32 [B, K], which the task accepts;
- every random draw is per example, from `jax.random.split` of `key`: the result does not depend on how the
  batch is sharded, and the same key gives the same output.

Ops (parameters with their defaults; each is the identity at zero strength):
  random_crop(padding=4, mode='reflect'|'constant')
  random_resized_crop(scale=(0.08, 1.0), ratio=(3/4, 4/3))
  flip_lr(probability=0.5), flip_ud(probability=0.5)
  rotate(degrees=15.0, fill=0)
  color_jitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, probability=1.0)
  grayscale(probability=0.2)
  gaussian_blur(sigma=(0.1, 2.0), probability=0.5)
  random_erasing(probability=0.25, scale=(0.02, 1/3), ratio=(0.3, 3.3), value='random'|0..255)
  rand_augment(num_ops=2, magnitude=9, ops=None)       magnitude on torchvision's 0..30 scale
  mixup(alpha=0.2, probability=1.0), cutmix(alpha=1.0, probability=1.0)
"""

import ast
import inspect
import re
from collections.abc import Callable

import jax

from jaxcls.core.errors import ConfigError

# The op modules register themselves in AUGMENTATIONS on import.
from jaxcls.data.augment import color as _color  # noqa: F401  pylint: disable=unused-import
from jaxcls.data.augment import erase as _erase  # noqa: F401  pylint: disable=unused-import
from jaxcls.data.augment import geometric as _geometric  # noqa: F401  pylint: disable=unused-import
from jaxcls.data.augment import mix as _mix  # noqa: F401  pylint: disable=unused-import
from jaxcls.data.augment import randaugment as _randaugment  # noqa: F401  pylint: disable=unused-import
from jaxcls.data.augment.base import AUGMENTATIONS

Augment = Callable[..., tuple[jax.Array, jax.Array]]

# Names people try for normalisation, which is never an op: the step always normalises, exactly once.
_NORMALIZE_NAMES = ("normalize", "normalise", "normalization", "normalisation", "standardize")

_OP = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.S)


def names() -> list[str]:
  """Every registered op name."""
  return AUGMENTATIONS.names()


def parse(spec: str | tuple | list) -> list[tuple[str, dict]]:
  """'a(x=1)|b' or ['a(x=1)', 'b'] -> [('a', {'x': 1}), ('b', {})]."""
  items = spec.split("|") if isinstance(spec, str) else list(spec)
  ops = []
  for item in items:
    if not str(item).strip():
      continue
    match = _OP.match(str(item))
    if not match:
      raise ConfigError(f"Cannot parse augmentation {item!r}; write it as name(key=value, ...).")
    name, args = match.group(1), match.group(2) or ""
    try:
      call = ast.parse(f"f({args})", mode="eval").body
      kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
      if call.args or any(kw.arg is None for kw in call.keywords):
        raise ValueError("positional")
    except (SyntaxError, ValueError) as e:
      raise ConfigError(
        f"Cannot parse the arguments of augmentation {item!r}; use keyword literals like random_crop(padding=4)."
      ) from e
    ops.append((name, kwargs))
  return ops


def build(spec: str | tuple | list, num_classes: int) -> Augment:
  """One function applying every op of `spec` in order: fn(key, images, labels, mask=None) -> (images, labels).

  The identity for an empty spec. `num_classes` sizes the soft labels that Mixup and CutMix produce.
  """
  ops = []
  for name, kwargs in parse(spec):
    if name.lower() in _NORMALIZE_NAMES:
      raise ConfigError(
        f"Augmentation {name!r} is not an op: the train step always normalises once with the dataset's mean "
        "and std; set dataset.mean and dataset.std to change them."
      )
    factory = AUGMENTATIONS.get(name)
    takes_classes = "num_classes" in inspect.signature(factory).parameters
    if "num_classes" in kwargs:
      raise ConfigError(f"Augmentation {name!r} takes no num_classes parameter; the dataset sets it.")
    try:
      ops.append(factory(**kwargs, num_classes=num_classes) if takes_classes else factory(**kwargs))
    except TypeError as e:
      raise ConfigError(f"Bad arguments for augmentation {name!r}: {e}.") from e

  def apply(
    key: jax.Array, images: jax.Array, labels: jax.Array, mask: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array]:
    if mask is None:
      mask = jax.numpy.ones(images.shape[:1], bool)
    for i, op in enumerate(ops):
      images, labels = op(jax.random.fold_in(key, i), images, labels, mask)
    return images, labels

  return apply
