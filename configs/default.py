"""The embedded default: a small CNN on scikit-learn's 8x8 handwritten digits, offline, in well under a minute.

  python -m jaxcls.main --config configs/default.py --workdir /tmp/jaxcls-digits

Data: the 1,797 images of `sklearn.datasets.load_digits` (shipped with scikit-learn), a fixed stratified split
of 1,437 train / 360 test (seed 0), upsampled to 16x16 (bilinear) so the three conv blocks see 16, 8 and 4 pixel
maps instead of 8, 4 and 2. Expected: >= 99% test accuracy (the plain-flax twin, benchmarks/plain_flax_digits.py,
made 2, 0 and 3 errors of 360 with seeds 0, 1, 2) in about 30 s wall time on a 2-core CPU, compilation included.
benchmarks/digits_vs_plain.py times this run against that script; tests/training/test_default_recipe.py keeps
them equal. The model, optimizer, schedule and augmentation are `small_cnn_recipe` (jaxcls/config/recipes.py),
shared with configs/folder.py's small images.
"""

from jaxcls import config_base
from jaxcls.config import recipes


def get_config():
  config = config_base.get_base_config()
  config.dataset.name = "digits"
  config.dataset.image_size = (16, 16)

  recipes.small_cnn_recipe(config, num_epochs=40)  # model, optimizer, schedule, augmentation: jaxcls/config/recipes.py
  # A cadence for a run of half a minute: an evaluation every 10 epochs (220 steps of 64; 4 points on the curves)
  # and at the end, and a checkpoint each minute and at the end (a kill loses at most a minute). Per-epoch
  # evaluations and checkpoints cost this run 3-4 s of its ~25 (their saves' background writes slow the steps too).
  config.eval_every_steps = 220
  config.checkpoint_every_steps = -1
  config.checkpoint_every_secs = 60.0
  return config
