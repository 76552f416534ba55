"""The values of `config.eval_tta`, owned by the config layer so a config is checked without jax.

This module imports neither jax nor ml_collections: `jaxcls/models/tta.py` implements each kind (its `KINDS` and
`check` are these), and the benchmark, which runs where ml_collections is not installed, reaches it through the
eval step.
"""

from jaxcls.core.errors import ConfigError
from jaxcls.core.registry import did_you_mean

EVAL_TTA_KINDS = ("none", "flip", "flip_translate")


def check_eval_tta(kind: str) -> str:
  """`kind` when it names a test-time augmentation; otherwise a ConfigError listing the valid names."""
  if kind not in EVAL_TTA_KINDS:
    raise ConfigError(
      f"config.eval_tta={kind!r} is not a test-time augmentation."
      f"{did_you_mean(str(kind), EVAL_TTA_KINDS)} Valid: {', '.join(repr(k) for k in EVAL_TTA_KINDS)}."
    )
  return kind
