"""A ResNet-18 on your own images: one subfolder per class (optionally under train/, val/, test/).

  python -m jaxcls.show_data --config configs/folder.py --config.dataset.path=/data/pets --output grid.png
  python -m jaxcls.main --config configs/folder.py --workdir runs/pets --config.dataset.path=/data/pets

JPEG, PNG, BMP, GIF, WebP and TIFF in any mode are read; unreadable files are skipped and listed in
WORKDIR/skipped_files.txt. Without split folders, 20% of each class is held out (seeded, stratified). Training
uses the Inception random resized crop at 224x224 decoded per batch on the host (`cache='none'`); for a small
folder, `--config.dataset.cache=memory --config.dataset.train_crop=resize` decodes everything once instead.
Expected: depends on your data; on a 2-core CPU ResNet-18 at 224 px takes ~5 s per 128-image step, so on CPU try
`--config.dataset.image_size='(64, 64)' --config.model.name=simple_cnn` first.
"""

from jaxcls import config_base


def get_config():
  config = config_base.get_base_config()
  config.dataset.name = "folder"
  config.dataset.path = ""  # set with --config.dataset.path=/your/folder
  config.dataset.image_size = (224, 224)
  config.dataset.channels = 3
  config.dataset.cache = "auto"
  config.dataset.train_crop = "random_resized"
  config.dataset.eval_crop = "center"
  config.dataset.test_fraction = 0.2
  config.dataset.mean = (0.485, 0.456, 0.406)  # ImageNet's: the sampled estimate is noisy for small folders
  config.dataset.std = (0.229, 0.224, 0.225)

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
  return config
