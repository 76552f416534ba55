"""Fine-tune a pretrained ResNet-18 on your own folder of images (one subfolder per class): a template to edit.

Give the two paths on the command line (or write them below):

  python -m jaxcls.main --config configs/transfer_folder.py --workdir runs/pets-ft \
    --config.dataset.path=/data/pets --config.init_from=weights/resnet18.msgpack

`init_from` is a jaxcls workdir (e.g. a model you trained on another folder), one of its `checkpoints/<step>`
folders, or torchvision weights converted with
`python -m jaxcls.convert --model resnet18 --input resnet18.pth --output weights/resnet18.msgpack`.
The backbone is loaded and the head re-initialised for your classes. The recipe (shared with
configs/finetune_folder.py: `finetune_folder_recipe` in jaxcls/config/recipes.py; a key set after it here or on the
command line wins) trains the backbone at a tenth of the head's rate; `--config.optimizer.backbone_lr_factor=0`
freezes it (a linear probe: fastest, and best when you have only a few images per class). The model settings must
be those of the source (for a workdir: its config.json), and the normalisation that of its training data (ImageNet's
for torchvision weights; for a jaxcls workdir, its config.json `dataset.mean`/`.std`).
Expected: depends on your data; a few hundred images per class fine-tuned from ImageNet weights usually beat
training from scratch by a wide margin. On a 2-core CPU ResNet-18 at 224 px takes ~5 s per 32-image step: try
`--config.dataset.image_size='(112, 112)'` first, or `backbone_lr_factor=0` (no backbone gradients are applied).
"""

from jaxcls import config_base
from jaxcls.config import recipes


def get_config():
  config = config_base.get_base_config()
  config.init_from = ""  # set with --config.init_from=PATH (a workdir, checkpoints/<step>, or .msgpack/.npz)
  config.init_from_step = -1  # a workdir's latest checkpoint
  recipes.finetune_folder_recipe(config)  # folder, crops, SGD schedule, flips, new head: jaxcls/config/recipes.py

  config.dataset.image_size = (224, 224)
  config.dataset.mean = (0.485, 0.456, 0.406)  # ImageNet's, which torchvision weights expect
  config.dataset.std = (0.229, 0.224, 0.225)
  config.model.name = "resnet18"
  config.compilation_cache_dir = ""  # e.g. ~/.cache/jaxcls/xla: reruns skip compiling
  return config
