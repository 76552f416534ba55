"""The recipes in jaxcls/config/recipes.py leave every config file that uses them resolving to exactly the values it
had when each file spelt its recipe out (2026-12-03, before the refactor): the whole to_dict() is compared, tuples
as tuples, so a changed, added or dropped value in a recipe fails here."""

import importlib.util
import os

import numpy as np
import pytest
from conftest import REPO, set_keys
from PIL import Image

from jaxcls.config.base import get_base_config

# The keys each file set (values equal to the base default included), as they resolved before the recipes existed.
SMALL_CNN = {
  "model.name": "simple_cnn",
  "model.widths": (32, 64, 128),
  "model.dropout": 0.3,
  "task.label_smoothing": 0.1,
  "optimizer.name": "adamw",
  "optimizer.learning_rate": 3e-3,
  "optimizer.weight_decay": 1e-4,
  "optimizer.schedule": "cosine",
  "optimizer.warmup_steps": 50,
  "augment": "random_crop(padding=2, mode='constant')",
  "batch_size": 64,
  "log_every_steps": 50,
}
DEFAULT = {
  **SMALL_CNN,
  "dataset.name": "digits",
  "dataset.image_size": (16, 16),
  "num_epochs": 40,
  "eval_every_steps": 220,  # the short run's cadence (issue 14): every 10 epochs, and a checkpoint a minute
  "checkpoint_every_steps": -1,
  "checkpoint_every_secs": 60.0,
}
FOLDER = {"dataset.name": "folder", "dataset.path": "", "dataset.image_size": None, "dataset.channels": 0}
FOLDER_PHOTOS = {
  **FOLDER,
  "dataset.test_fraction": 0.2,
  "dataset.image_size": (224, 224),
  "dataset.cache": "auto",
  "dataset.train_crop": "random_resized",
  "dataset.eval_crop": "center",
  "model.name": "resnet18",
  "optimizer.name": "sgd",
  "optimizer.learning_rate": 0.1,
  "optimizer.weight_decay": 1e-4,
  "optimizer.schedule": "cosine",
  "optimizer.warmup_steps": 10,
  "augment": "flip_lr",
  "batch_size": 32,
  "num_epochs": 30,
  "log_every_steps": 10,
}
FOLDER_SMALL = {
  **FOLDER,
  **SMALL_CNN,
  "dataset.test_fraction": 0.2,
  "dataset.cache": "memory",
  "dataset.train_crop": "resize",
  "dataset.eval_crop": "resize",
  "num_epochs": 30,
}
FINETUNE = {  # shared by finetune_folder.py and transfer_folder.py
  "init_head": "auto",
  "dataset.name": "folder",
  "dataset.path": "",
  "dataset.channels": 3,
  "dataset.cache": "auto",
  "dataset.train_crop": "random_resized",
  "dataset.crop_area": (0.25, 1.0),
  "dataset.eval_crop": "center",
  "dataset.test_fraction": 0.2,
  "optimizer.name": "sgd",
  "optimizer.learning_rate": 0.01,
  "optimizer.momentum": 0.9,
  "optimizer.weight_decay": 1e-4,
  "optimizer.schedule": "cosine",
  "optimizer.warmup_steps": 5,
  "optimizer.backbone_lr_factor": 0.1,
  "augment": "flip_lr",
  "batch_size": 32,
  "num_epochs": 10,
  "log_every_steps": 10,
}
FINETUNE_FOLDER = {**FINETUNE, "init_from": "hf-hub:timm/resnet50.a1_in1k", "model.name": "resnet50"}
TRANSFER_FOLDER = {
  **FINETUNE,
  "init_from": "",
  "init_from_step": -1,
  "dataset.image_size": (224, 224),
  "dataset.mean": (0.485, 0.456, 0.406),
  "dataset.std": (0.229, 0.224, 0.225),
  "model.name": "resnet18",
  "compilation_cache_dir": "",
}


def _config_file(name: str, *args):
  spec = importlib.util.spec_from_file_location(f"recipes_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _expected(values: dict) -> dict:
  """The base config's to_dict() with `values` (dotted keys) set: what a config file must resolve to, in full."""
  return set_keys(get_base_config(), values).to_dict()


def _images(root, side: int, count: int = 30):
  """Two class folders of `count` real PNG files each, `side` pixels high."""
  for name in ("a", "b"):
    os.makedirs(root / name)
    for i in range(count):
      Image.fromarray(np.full((side, side + side // 5, 3), 8 * i, np.uint8)).save(root / name / f"{i}.png")
  return str(root)


@pytest.mark.parametrize(
  "name, expected",
  [("default", DEFAULT), ("finetune_folder", FINETUNE_FOLDER), ("transfer_folder", TRANSFER_FOLDER)],
)
def test_config_files_resolve_to_their_values(name, expected):
  assert _config_file(name).to_dict() == _expected(expected)


def test_folder_config_resolves_to_its_values(tmp_path, monkeypatch):
  monkeypatch.setattr("sys.argv", ["main"])  # configs/folder.py also reads --config.dataset.path from argv
  assert _config_file("folder").to_dict() == _expected(FOLDER_PHOTOS)  # no folder to look into: photos
  # 60 images, 48 for training: batch 64 halves to 16, warmup is capped at a tenth of 30 epochs x 3 steps.
  small, photos = _images(tmp_path / "small", 28), _images(tmp_path / "photos", 100)
  adapted = {"batch_size": 16, "optimizer.warmup_steps": 9}
  assert _config_file("folder", small).to_dict() == _expected({**FOLDER_SMALL, "dataset.path": small, **adapted})
  assert _config_file("folder", photos).to_dict() == _expected({**FOLDER_PHOTOS, "dataset.path": photos, **adapted})


def test_the_recipes_are_the_shared_parts():
  """default.py and folder.py's small-image branch differ only in their own keys; so do the two fine-tuning files."""
  from jaxcls import config_base
  from jaxcls.config import base, recipes

  assert config_base.get_base_config is base.get_base_config  # the import config files use keeps working
  small = recipes.small_cnn_recipe(get_base_config(), num_epochs=40).to_dict()
  assert small == _expected({**SMALL_CNN, "num_epochs": 40})
  assert recipes.finetune_folder_recipe(get_base_config()).to_dict() == _expected(FINETUNE)
