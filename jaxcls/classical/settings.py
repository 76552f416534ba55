"""The `config.classical` section: its keys with defaults, and their checks.

The shared base config (jaxcls/config/base.py) holds the deep-learning keys; a classical config file adds this
section with `config.classical = settings.defaults()`. Its keys are checked here, with the same one-line
'did you mean' errors as the rest of the config.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from jaxcls.classical import handcrafted
from jaxcls.config import check as config_check
from jaxcls.core.errors import ConfigError
from jaxcls.evaluation.knn import METRICS

CLASSIFIERS = ("svm", "knn")


def defaults() -> ml_collections.ConfigDict:
  """Every key of `config.classical`, with its default."""
  c = ml_collections.ConfigDict()
  c.classifier = "svm"  # 'svm' (linear, one-vs-rest, squared hinge) | 'knn'
  c.features = "hog"  # ','-joined, concatenated in order: 'hog' | 'color_hist' | 'pixels'
  c.hog_orientations = 9  # unsigned orientation bins over [0, 180) degrees
  c.hog_cell_size = 4  # pixels per cell side
  c.hog_block_size = 2  # cells per block side (L2-Hys normalised, stride one cell)
  c.color_bins = 16  # color_hist: bins per channel
  # Scale each feature to zero mean, unit variance with training statistics: True | False | 'auto' (the SVM:
  # True, its L2 penalty and L-BFGS want comparable scales; k-NN: whichever of raw and standardised features
  # scores higher on a held-out fifth of the training split, since scaling changes which neighbours are near).
  c.standardize = config_dict.FieldReference("auto", field_type=object)
  c.svm_c = 1.0  # inverse regularisation strength, as scikit-learn's LinearSVC C
  c.svm_max_iter = 500  # L-BFGS iterations at most
  c.svm_tol = 1e-4  # stop when the gradient norm of the objective falls below this
  c.knn_k = 5  # neighbours that vote
  c.knn_metric = "euclidean"  # 'euclidean' | 'cosine'
  c.batch_size = 1024  # images per feature-extraction call and k-NN query batch
  return c


@dataclasses.dataclass(frozen=True)
class Settings:
  """The checked `config.classical` values."""

  classifier: str
  spec: handcrafted.FeatureSpec
  standardize: bool | str  # True, False or 'auto' (run.choose_standardize decides)
  svm_c: float
  svm_max_iter: int
  svm_tol: float
  knn_k: int
  knn_metric: str
  batch_size: int


def check(config: ml_collections.ConfigDict) -> Settings:
  """Validates the whole config (base keys and the classical section) and returns the classical settings."""
  if "classical" not in config:
    raise ConfigError(
      "The config has no 'classical' section; start the config file from "
      "configs/classical_digits.py (it sets config.classical = settings.defaults())."
    )
  base = ml_collections.ConfigDict(config.to_dict())
  del base["classical"]
  config_check.validate(base)
  section = config.classical
  known = config_check.leaf_paths(defaults())
  for key in config_check.leaf_paths(section):
    if key not in known:
      message = config_check.unknown_key_message(key, known)
      raise ConfigError(
        message.replace("jaxcls/config/base.py", "jaxcls/classical/settings.py").replace(
          f"key {key!r}", f"key 'classical.{key}'"
        )
      )
  merged = defaults()
  merged.update(section.to_dict())  # values: the FieldReference of standardize cannot take another reference
  if merged.classifier not in CLASSIFIERS:
    raise ConfigError(f"classical.classifier={merged.classifier!r} is not valid; use one of {', '.join(CLASSIFIERS)}.")
  if merged.knn_metric not in METRICS:
    raise ConfigError(f"classical.knn_metric={merged.knn_metric!r} is not valid; use one of {', '.join(METRICS)}.")
  for key in ("knn_k", "batch_size", "svm_max_iter"):
    if int(merged[key]) < 1:
      raise ConfigError(f"classical.{key}={merged[key]} must be a positive integer.")
  if merged.svm_c <= 0 or merged.svm_tol < 0:
    raise ConfigError(
      f"classical.svm_c={merged.svm_c} must be positive and classical.svm_tol={merged.svm_tol} non-negative."
    )
  if not (isinstance(merged.standardize, bool) or merged.standardize == "auto"):
    raise ConfigError(
      f"classical.standardize={merged.standardize!r} is not valid; use True, False or 'auto' (the "
      "SVM standardises, k-NN picks by validation)."
    )
  names = tuple(n.strip() for n in str(merged.features).split(",") if n.strip())
  spec = handcrafted.FeatureSpec(
    names=names,
    hog_orientations=int(merged.hog_orientations),
    hog_cell_size=int(merged.hog_cell_size),
    hog_block_size=int(merged.hog_block_size),
    color_bins=int(merged.color_bins),
  )
  return Settings(
    classifier=merged.classifier,
    spec=spec,
    standardize=merged.standardize,
    svm_c=float(merged.svm_c),
    svm_max_iter=int(merged.svm_max_iter),
    svm_tol=float(merged.svm_tol),
    knn_k=int(merged.knn_k),
    knn_metric=merged.knn_metric,
    batch_size=int(merged.batch_size),
  )
