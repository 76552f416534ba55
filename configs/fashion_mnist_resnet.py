"""ResNet-18 (ImageNet stem, width 32) on Fashion-MNIST read from the original idx files.

  apt-get install dataset-fashion-mnist   # Debian: the four idx.gz files in /usr/share/datasets/fashion-mnist
  python -m jaxcls.main --config configs/fashion_mnist_resnet.py --workdir runs/fashion \
    [--config.dataset.path=/elsewhere/fashion-mnist]

Data: 60,000 train / 10,000 test 28x28 grayscale images, 10 classes. Result on a 2-core CPU shared with other
jobs, compilation included: 89.79% test accuracy (loss 0.275) after these 4 epochs (1,872 steps) in 32 minutes
wall time; 88.29% after 2 epochs, 84.7% after 1. More epochs, or stem='small' and width=64 on an accelerator, are
what it takes to pass 92%.
"""

from jaxcls import config_base
from jaxcls.data.sources import idx


def get_config():
  config = config_base.get_base_config()
  idx.use_fashion_mnist(config.dataset)

  # ResNet-18 at width 32 with the ImageNet stem (28 -> 7 pixels before the first stage), so that four epochs fit
  # in about half an hour of a shared 2-core CPU. On an accelerator use stem='small' and width=64 for ~95%.
  config.model.name = "resnet18"
  config.model.stem = "imagenet"
  config.model.width = 32

  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = "cosine"
  config.optimizer.warmup_steps = 100

  config.augment = "random_crop(padding=2, mode='constant')|flip_lr"
  config.batch_size = 128
  config.num_epochs = 4
  config.log_every_steps = 100
  return config
