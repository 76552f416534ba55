"""Training recipes that more than one file in configs/ uses, each in one place.

Two experiment files that mean the same recipe (configs/default.py's digits CNN and configs/folder.py's
small-image branch; configs/finetune_folder.py and configs/transfer_folder.py) used to repeat its dozen values,
so a tuned value could change in one and not the other. Each function here sets those values on a config from
`get_base_config()`; the config file then sets only what is its own, and any key set after the call (in the file
or with `--config.X=...`) wins.
"""

import ml_collections


def small_cnn_recipe(config: ml_collections.ConfigDict, *, num_epochs: float) -> ml_collections.ConfigDict:
  """The small CNN that reaches >= 99% on scikit-learn's digits (configs/default.py) and trains small images
  from a folder (configs/folder.py): simple_cnn 32/64/128 with dropout 0.3, label smoothing 0.1, AdamW at 3e-3
  (weight decay 1e-4) with a cosine schedule after 50 warmup steps, random 2-px shifts with zero fill (no flips:
  a mirrored digit or letter is another one), batches of 64. `num_epochs` is each file's own (40 and 30)."""
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
  config.num_epochs = num_epochs
  config.log_every_steps = 50
  return config


def finetune_folder_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fine-tuning pretrained weights on a folder of photos (configs/finetune_folder.py, configs/transfer_folder.py):
  the folder source (3 channels, streamed or cached as its size allows, 20% held out), a milder Inception crop
  (area 0.25 to 1: small folders have fewer, framed objects) and a centre crop for evaluation, horizontal flips,
  SGD at 0.01 (a tenth of training from scratch: the weights start close to good) with the backbone at a tenth of
  that, a cosine schedule after 5 warmup steps, 10 epochs of batch 32, and a new head unless the weights' fits.

  The weights, the model and the normalisation are each file's own: they must match the weights."""
  config.init_head = "auto"  # a new head unless the source was trained on exactly these classes

  config.dataset.name = "folder"
  config.dataset.path = ""  # set with --config.dataset.path=/your/folder
  config.dataset.channels = 3
  config.dataset.cache = "auto"
  config.dataset.train_crop = "random_resized"
  config.dataset.crop_area = (0.25, 1.0)
  config.dataset.eval_crop = "center"
  config.dataset.test_fraction = 0.2

  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.01
  config.optimizer.momentum = 0.9
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 5
  config.optimizer.backbone_lr_factor = 0.1  # 0 = frozen backbone (a linear probe)

  config.augment = "flip_lr"
  config.batch_size = 32
  config.num_epochs = 10
  config.log_every_steps = 10
  return config
