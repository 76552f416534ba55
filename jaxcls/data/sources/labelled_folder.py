"""A folder of new labelled images, evaluated by a model trained elsewhere (`python -m jaxcls.evaluate --data`).

The images are labelled the way training data is: class subfolders named like the trained classes (a subset is
fine: a new batch of scans may lack a rare class), or a CSV/JSON label file (`--labels_file`, see
`data/label_file.py`), which may also give each image a group. Every image is evaluated (no split), decoded and
cropped as the trained model's evaluation did, and normalised with the trained statistics, not the new images'.
"""

import os

import numpy as np

from jaxcls.config import base as config_base
from jaxcls.core.errors import DataError
from jaxcls.data import decode
from jaxcls.data.base import DatasetInfo
from jaxcls.data.in_memory import ArrayDataset
from jaxcls.data.sources import folder, folder_scan, label_file


def _from_class_folders(path: str, class_names: tuple[str, ...], depth: int) -> tuple[list[str], np.ndarray]:
  classes, _ = folder_scan.read_classes(path, depth)
  if not classes:
    raise DataError(
      f"{path} has no class subfolders; put each class's images in a subfolder named like a "
      f"trained class ({', '.join(class_names[:10])}), or give --labels_file."
    )
  unknown = sorted(set(classes) - set(class_names))
  if unknown:
    raise DataError(
      f"{path} has class folders {unknown[:5]} that the model was not trained on; it knows "
      f"{', '.join(class_names[:20])}. Rename or remove those folders."
    )
  index = {name: k for k, name in enumerate(class_names)}
  paths, labels = [], []
  for name in sorted(classes):
    paths += classes[name]
    labels += [index[name]] * len(classes[name])
  return paths, np.asarray(labels, np.int32)


def load(config, info: DatasetInfo, path: str, labels_file: str = "") -> ArrayDataset:
  """Every image under `path`, labelled by class folders or `labels_file`, as the eval split of a dataset.

  `config` is the trained run's resolved config and `info` its DatasetInfo (class names, image size, mean/std).
  Unreadable files are skipped and listed in the dataset's `skipped_files`.
  """
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise DataError(f"--data={path!r} is not a folder; point it at a folder of labelled images.")
  groups = None
  if labels_file:
    paths, labels, records, _ = label_file.read(
      labels_file,
      path,
      info.class_names,
      multi_label=config.task.type == "multilabel",
      separator=config.dataset.get("label_separator", ""),
    )
    groups = label_file.groups_of(records)
  else:
    paths, labels = _from_class_folders(path, info.class_names, int(config.dataset.get("class_depth", 1)))
  size = info.image_shape[:2]
  ds = config.dataset
  crop = decode.Crop(size, ds.get("eval_crop", "resize"), ds.get("center_crop_fraction", 0.875))
  max_pixels = int(ds.get("max_image_pixels", config_base.get_base_config().dataset.max_image_pixels))
  images, keep, skipped = folder.decode_all(paths, crop, info.image_shape[2], max_pixels, os.cpu_count() or 1)
  if not len(keep):
    raise DataError(
      f"None of the {len(paths)} images under {path} could be decoded (e.g. {skipped[0][0]}: "
      f"{skipped[0][1]}); check that the files are images."
    )
  labels = labels[keep]
  eval_info = DatasetInfo(
    num_classes=info.num_classes,
    class_names=info.class_names,
    image_shape=info.image_shape,
    num_train=len(labels),
    num_eval=len(labels),
    mean=info.mean,
    std=info.std,
  )
  dataset = ArrayDataset(eval_info, (images, labels), (images, labels))
  dataset.skipped_files = skipped
  dataset.eval_groups = None if groups is None else groups[keep]
  return dataset
