"""The embedded default: a small CNN on scikit-learn's 8x8 handwritten digits, offline, in well under a minute.

  python -m jaxcls.main --config configs/default.py --workdir /tmp/jaxcls-digits

Data: the 1,797 images of `sklearn.datasets.load_digits` (shipped with scikit-learn), a fixed stratified split
of 1,437 train / 360 test (seed 0), upsampled to 16x16 (bilinear) so the three conv blocks see 16, 8 and 4 pixel
maps instead of 8, 4 and 2. Expected: >= 99% test accuracy (the plain-flax twin, benchmarks/plain_flax_digits.py,
made 2, 0 and 3 errors of 360 with seeds 0, 1, 2) in about 30 s wall time on a 2-core CPU, compilation included.
benchmarks/digits_vs_plain.py times this run against that script; tests/test_default_recipe.py keeps them equal.
"""

from jaxcls import config_base


def get_config():
  config = config_base.get_base_config()
  config.dataset.name = "digits"
  config.dataset.image_size = (16, 16)

  config.model.name = "simple_cnn"
  config.model.widths = (32, 64, 128)
  config.model.dropout = 0.3

  config.task.label_smoothing = 0.1

  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 50

  config.augment = "random_crop(padding=2, mode='constant')"
  config.batch_size = 64
  config.num_epochs = 40
  config.log_every_steps = 50
  return config
