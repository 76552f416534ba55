"""Fine-tune timm's ImageNet ResNet-50 (hf-hub:timm/resnet50.a1_in1k) on your own folder, in one command.

  python -m jaxcls.main --config configs/finetune_folder.py --workdir runs/pets-ft --config.dataset.path=/data/pets

The folder holds one subfolder per class. The weights come from the Hugging Face hub through huggingface_hub's
cache (~/.cache/huggingface/hub, or $HF_HUB_CACHE / $HF_HOME): the first run downloads model.safetensors and
config.json (about 100 MB), later runs, and runs with HF_HUB_OFFLINE=1, read the cache. No torch is needed
(`pip install huggingface_hub safetensors`). To start from other weights, name them:

  --config.init_from=hf-hub:timm/resnet50.tv2_in1k --config.model.name=resnet50     # a timm repo (@REVISION pins)
  --config.init_from=hf-hub:timm/convnext_tiny.fb_in1k --config.model.name=convnext_tiny
  --config.init_from=torchvision:resnet18 --config.model.name=resnet18                # needs torch + torchvision
  --config.init_from=/path/to/model.safetensors                                       # timm or torchvision layout

Preprocessing comes from the weights: the dataset keys left unset below (mean, std, image size) and the centre-crop
fraction take the repo's config.json values (timm's pretrained_cfg: for resnet50.a1_in1k, ImageNet's mean and std,
224x224, crop 0.95), written into the workdir's config.json; a key you set on the command line wins, with a warning
when it differs. The 1000-class ImageNet head is replaced by a new one for your classes; the backbone trains at a
tenth of the head's rate (`--config.optimizer.backbone_lr_factor=0` freezes it: a linear probe, fastest, and best
with a few images per class).

Expected accuracy: not measured. The machines jaxcls is developed on cannot reach the hub, so this config has been
run only on hub caches built offline by the tests (which check that the loaded weights equal the file's exactly);
what it reaches on your data with the real weights is yours to measure. On a 2-core CPU ResNet-50 at 224 px is slow
(several seconds per 32-image step): try `--config.optimizer.backbone_lr_factor=0` first.
"""

from jaxcls import config_base
from jaxcls.config import recipes


def get_config():
  config = config_base.get_base_config()
  config.init_from = "hf-hub:timm/resnet50.a1_in1k"
  recipes.finetune_folder_recipe(config)  # folder, crops, SGD schedule, flips, new head: jaxcls/config/recipes.py

  # dataset.image_size, .mean, .std and .center_crop_fraction are left at their defaults: the weights' config.json
  # fills them (set any of them to override).
  config.model.name = "resnet50"  # must be the weights' architecture (checked against the repo's config.json)
  return config
