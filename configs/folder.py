"""Your own images, one subfolder per class (optionally under train/, val/, test/), trained by one command.

  python -m jaxcls.main --config configs/folder.py --workdir runs/mine --config.dataset.path=/data/mine
  python -m jaxcls.main --config configs/folder.py:/data/mine --workdir runs/mine        (the same)
  python -m jaxcls.show_data --config configs/folder.py --config.dataset.path=/data/mine --output grid.png

JPEG, PNG, BMP, GIF, WebP and TIFF in any mode are read; unreadable files are skipped and listed in
WORKDIR/skipped_files.txt. Without split folders, 20% of each class is held out (seeded, stratified).

What the images say is not asked for: the folder source takes their size (when they share one, up to 256 px a
side), their channels (1 when every sampled file is grayscale, else 3) and their own per-channel mean and std
(`dataset.image_size=None`, `channels=0`, `mean`/`std` unset). This file looks at a few image headers of the
folder (the path from `configs/folder.py:PATH` or `--config.dataset.path`) to pick the recipe that fits them:

- small images (at most SMALL_SIDE = 64 px a side: digits, characters, icons, 32x32 photos): the images at their
  own size, decoded once into memory, a small CNN (simple_cnn, 32/64/128 channels, dropout 0.3), AdamW at 3e-3 with
  a cosine schedule, label smoothing 0.1, random 2-px shifts (no flips: a mirrored digit or letter is another
  one), 30 epochs of batch 64. Measured: 3,000 MNIST training images (300 per class) written as 28x28 grey PNGs
  in ten class folders, `python -m jaxcls.main --config configs/folder.py --workdir W --config.dataset.path=D`
  and nothing else: 2,400 train / 600 held-out images, 97.83% test accuracy (587 of 600) in 215 s wall time on
  the project's 2-core CPU shared with other jobs (1,110 steps, compilation included; 2026-12-03).
- larger images (photos), or a folder this file cannot look into (a gs:// URL): ResNet-18 at 224x224, the
  Inception random resized crop decoded per batch on the host (`cache='auto'`), centre crop for evaluation,
  horizontal flips, SGD at 0.1 with a cosine schedule, 30 epochs of batch 32. Expected: depends on your data; on a
  2-core CPU ResNet-18 at 224 px takes ~5 s per 128-image step, so on a CPU try
  `--config.dataset.image_size='(64, 64)' --config.model.name=simple_cnn` first.
A folder of fewer than 5,000 images also gets a batch it can fill (halved while it exceeds half the training
images) and a warmup of at most a tenth of its steps. Any key can still be overridden on the command line, after
the recipe is chosen.
"""

import os
import sys

from jaxcls import config_base
from jaxcls.config import recipes

SMALL_SIDE = 64
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_PEEK = 16  # image headers read, from the first folders in sorted order
_COUNT_ENOUGH = 5000  # image files past which a folder is not small: batch and warmup stay as the recipe sets them


def _path_from_command_line() -> str:
  """`--config.dataset.path` as the command line gives it (a config file runs before the overrides apply)."""
  argv = sys.argv[1:]
  for i, arg in enumerate(argv):
    if arg.startswith("--config.dataset.path="):
      return arg.split("=", 1)[1]
    if arg == "--config.dataset.path" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _look(path: str) -> tuple[int | None, int]:
  """(the longest side among a few image headers under `path`, the image files counted up to _COUNT_ENOUGH);
  (None, 0) when the folder cannot be looked into."""
  if not path or "://" in path or not os.path.isdir(os.path.expanduser(path)):
    return None, 0
  from PIL import Image  # pylint: disable=g-import-not-at-top

  sides, count = [], 0
  for root, folders, files in os.walk(os.path.expanduser(path)):
    folders.sort()
    folders[:] = [f for f in folders if not f.startswith(".")]
    images = sorted(n for n in files if n.lower().endswith(_IMAGE_EXTENSIONS) and not n.startswith("."))
    count += len(images)
    for name in images[:4] if len(sides) < _PEEK else ():  # a few from each folder: several classes are seen
      try:
        with Image.open(os.path.join(root, name)) as image:
          sides.append(max(image.size))
      except Exception:  # pylint: disable=broad-except  (an unreadable file: the source skips and lists it)
        continue
    if len(sides) >= _PEEK and count >= _COUNT_ENOUGH:
      break
  return (max(sides) if sides else None), count


def get_config(path: str = ""):
  config = config_base.get_base_config()
  config.dataset.name = "folder"
  config.dataset.path = path or ""  # or --config.dataset.path=/your/folder
  config.dataset.image_size = None  # the images' own size (when they share one; else set it)
  config.dataset.channels = 0  # 1 for grayscale images, 3 otherwise
  config.dataset.test_fraction = 0.2
  side, count = _look(path or _path_from_command_line())
  if side is not None and side <= SMALL_SIDE:
    _small_images(config)
  else:
    _photos(config)
  if count:  # a small folder: a batch it can fill, and a warmup shorter than its training
    train = int(count * (1 - config.dataset.test_fraction))
    while config.batch_size > 8 and config.batch_size > train // 2:
      config.batch_size //= 2
    steps = int(config.num_epochs * max(1, train // config.batch_size))
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
  return config


def _small_images(config) -> None:
  """Small images at their own size, in memory, with the small CNN recipe of configs/default.py (30 epochs)."""
  config.dataset.cache = "memory"
  config.dataset.train_crop = "resize"
  config.dataset.eval_crop = "resize"

  recipes.small_cnn_recipe(config, num_epochs=30)  # model, optimizer, schedule, augmentation: jaxcls/config/recipes.py


def _photos(config) -> None:
  """Photos: ResNet-18 at 224x224 with the Inception crop, streamed."""
  config.dataset.image_size = (224, 224)
  config.dataset.cache = "auto"
  config.dataset.train_crop = "random_resized"
  config.dataset.eval_crop = "center"

  config.model.name = "resnet18"

  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 10

  config.augment = "flip_lr"
  config.batch_size = 32
  config.num_epochs = 30
  config.log_every_steps = 10
