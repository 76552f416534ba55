"""A folder source described by a CSV/JSON label file: multi-label sets, splits, groups, and bad input."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxcls import data
from jaxcls.config.base import get_base_config
from jaxcls.core.errors import DataError

# Image i's pixels encode which of the three tags it carries (bit k of i % 8 -> tag k), so a model can learn it.
TAGS = ("cat", "dog", "fox")


def tags_of(i: int) -> list[str]:
  return [t for k, t in enumerate(TAGS) if (i % 8) >> k & 1]


def write_images(root, count: int) -> list[str]:
  os.makedirs(root / "photos", exist_ok=True)
  names = []
  for i in range(count):
    bits = [(i % 8) >> k & 1 for k in range(3)]
    pixels = np.zeros((8, 8, 3), np.uint8)
    for k, bit in enumerate(bits):
      pixels[..., k] = 220 if bit else 20
    name = f"photos/{i:03d}.png"
    Image.fromarray(pixels).save(root / name)
    names.append(name)
  return names


def config_for(root, labels_file, task="multilabel", **dataset):
  config = get_base_config()
  config.dataset.name = "folder"
  config.dataset.path = str(root)
  config.dataset.labels_file = str(labels_file)
  config.dataset.image_size = (8, 8)
  config.dataset.workers = 2
  config.task.type = task
  for key, value in dataset.items():
    config.dataset[key] = value
  return config


def write_csv(path, rows):
  with open(path, "w") as f:
    f.write("path,labels,split,group\n")
    f.writelines(",".join(row) + "\n" for row in rows)


def test_csv_with_label_sets_splits_and_groups(tmp_path):
  names = write_images(tmp_path, 24)
  rows = [(n, ";".join(tags_of(i)), "test" if i % 4 == 0 else "train", f"site_{i % 2}") for i, n in enumerate(names)]
  write_csv(tmp_path / "labels.csv", rows)
  for cache in ("memory", "none"):
    dataset = data.build(config_for(tmp_path, tmp_path / "labels.csv", cache=cache))
    assert dataset.info.class_names == TAGS
    assert dataset.info.num_train == 18 and dataset.info.num_eval == 6
    batch = next(iter(dataset.eval_batches(8)))
    valid = batch["label"][batch["mask"]]
    expected = [[int(t in tags_of(i)) for t in TAGS] for i in range(0, 24, 4)]
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_array_equal(dataset.eval_groups, ["site_0"] * 6)
    train = next(dataset.train_batches(6, seed=0))
    assert train["label"].shape == (6, 3)


def test_json_mapping_without_splits_gets_a_stratified_split_and_single_labels(tmp_path):
  names = write_images(tmp_path, 30)
  mapping = {n: [TAGS[i % 3]] for i, n in enumerate(names)}
  (tmp_path / "labels.json").write_text(json.dumps(mapping))
  dataset = data.build(config_for(tmp_path, tmp_path / "labels.json", task="multiclass", test_fraction=0.2))
  assert dataset.info.num_train == 24 and dataset.info.num_eval == 6
  assert dataset.info.train_class_counts == (8, 8, 8)
  assert dataset.eval_groups is None
  records = [{"path": n, "label": TAGS[i % 3], "group": "a" if i < 15 else "b"} for i, n in enumerate(names)]
  (tmp_path / "records.json").write_text(json.dumps(records))
  dataset = data.build(config_for(tmp_path, tmp_path / "records.json", task="multiclass", test_fraction=0.2))
  assert sorted(set(dataset.eval_groups)) == ["a", "b"]


def test_bad_label_files_fail_clearly(tmp_path):
  names = write_images(tmp_path, 6)
  write_csv(tmp_path / "two.csv", [(n, "cat;dog", "train", "") for n in names])
  with pytest.raises(DataError, match="exactly one per image; set task.type='multilabel'"):
    data.build(config_for(tmp_path, tmp_path / "two.csv", task="multiclass"))
  with pytest.raises(DataError, match="that dataset.class_names does not list"):
    data.build(config_for(tmp_path, tmp_path / "two.csv", class_names=("cat",)))
  write_csv(tmp_path / "mixed.csv", [(n, "cat", "train" if i else "", "") for i, n in enumerate(names)])
  with pytest.raises(DataError, match="have no split while others do"):
    data.build(config_for(tmp_path, tmp_path / "mixed.csv"))
  with pytest.raises(DataError, match="does not exist"):
    data.build(config_for(tmp_path, tmp_path / "nope.csv"))
  (tmp_path / "bad.csv").write_text("file,tags\na.png,cat\n")
  with pytest.raises(DataError, match="needs a 'path' and a 'labels' field"):
    data.build(config_for(tmp_path, tmp_path / "bad.csv"))


def test_space_separated_label_sets_are_refused_then_read_with_label_separator(tmp_path):
  """Defect 4: 'cat dog' once became its own class (combined classes, accuracy 0); now it is asked about."""
  names = write_images(tmp_path, 24)
  write_csv(
    tmp_path / "spaces.csv",
    [(n, " ".join(tags_of(i)), "test" if i % 4 == 0 else "train", "") for i, n in enumerate(names)],
  )
  with pytest.raises(DataError, match=r"dataset.label_separator=' ' if 'cat dog' means \['cat', 'dog'\]"):
    data.build(config_for(tmp_path, tmp_path / "spaces.csv"))
  dataset = data.build(config_for(tmp_path, tmp_path / "spaces.csv", label_separator=" "))
  assert dataset.info.class_names == TAGS
  batch = next(iter(dataset.eval_batches(8)))
  expected = [[int(t in tags_of(i)) for t in TAGS] for i in range(0, 24, 4)]
  np.testing.assert_array_equal(batch["label"][batch["mask"]], expected)
  write_csv(tmp_path / "pipes.csv", [(n, "|".join(tags_of(i)), "train", "") for i, n in enumerate(names)])
  with pytest.raises(DataError, match=r"dataset.label_separator='\|'"):
    data.build(config_for(tmp_path, tmp_path / "pipes.csv", eval_split="train"))
  dataset = data.build(config_for(tmp_path, tmp_path / "pipes.csv", eval_split="train", label_separator="|"))
  assert dataset.info.class_names == TAGS


def test_single_label_names_with_spaces_stay_whole_unless_they_look_like_lists(tmp_path):
  names = write_images(tmp_path, 12)
  breeds = ("golden retriever", "border collie", "pug")
  write_csv(tmp_path / "breeds.csv", [(n, breeds[i % 3], "train", "") for i, n in enumerate(names)])
  dataset = data.build(config_for(tmp_path, tmp_path / "breeds.csv", task="multiclass", eval_split="train"))
  assert dataset.info.class_names == tuple(sorted(breeds))
  # 'cat dog' beside 'cat' and 'dog': a list of labels that one combined class would hide.
  write_csv(tmp_path / "lists.csv", [(n, ("cat", "dog", "cat dog")[i % 3], "train", "") for i, n in enumerate(names)])
  with pytest.raises(DataError, match="looks like several labels separated by ' '.*task.type='multilabel'"):
    data.build(config_for(tmp_path, tmp_path / "lists.csv", task="multiclass", eval_split="train"))
  dataset = data.build(
    config_for(tmp_path, tmp_path / "lists.csv", task="multiclass", eval_split="train", label_separator=";")
  )
  assert dataset.info.class_names == ("cat", "cat dog", "dog")
  # A multi-label file with names that dataset.class_names lists is not ambiguous.
  write_csv(tmp_path / "named.csv", [(n, breeds[i % 3], "train", "") for i, n in enumerate(names)])
  dataset = data.build(config_for(tmp_path, tmp_path / "named.csv", eval_split="train", class_names=breeds))
  assert dataset.info.class_names == breeds


def test_multilabel_folder_trains_with_a_missing_file_skipped_and_groups_aligned(tmp_path, make_config):
  from jaxcls.training import loop as train

  names = write_images(tmp_path, 64)
  rows = [
    (n, ";".join(tags_of(i)), "test" if i % 4 == 0 else "train", "north" if i % 8 < 4 else "south")
    for i, n in enumerate(names)
  ]
  rows.append(("photos/missing.png", "cat", "test", "north"))  # listed, but not on disk
  write_csv(tmp_path / "labels.csv", rows)
  config = make_config(
    **{
      "dataset.name": "folder",
      "dataset.path": str(tmp_path),
      "dataset.labels_file": str(tmp_path / "labels.csv"),
      "dataset.workers": 2,
      "task.type": "multilabel",
      "augment": "",
      "num_train_steps": 6,
      "eval_every_steps": 6,
      "checkpoint_every_steps": 6,
    }
  )
  workdir = tmp_path / "run"
  final = train.train_and_evaluate(config, str(workdir))
  assert final["num_examples"] == 16  # the missing file is skipped, not counted
  assert "photos/missing.png" in (workdir / "skipped_files.txt").read_text()
  groups = final["per_group"]["groups"]
  assert {k: v["num_examples"] for k, v in groups.items()} == {"north": 8, "south": 8}
  assert "subset_accuracy" in final and "hamming_loss" in final
