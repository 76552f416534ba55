"""A folder source's labels from a CSV or JSON file instead of class subfolders (`dataset.labels_file`).

Multi-label images (a photo with a dog *and* a cat) cannot live in one class folder, and group attributes
(hospital, scanner, ...) have no folder to live in; a label file carries both. Image paths are relative to
`dataset.path` (or absolute).

CSV, with a header row; `labels` holds one or more class names separated by ';' (empty: no label), or by
`dataset.label_separator` when that is set (' ' means any run of spaces):

  path,labels,split,group
  photos/001.jpg,dog;cat,train,site_a
  photos/002.jpg,cat,test,site_b

JSON, either `{"photos/001.jpg": ["dog", "cat"], ...}` or a list of records
`[{"path": "photos/001.jpg", "labels": ["dog", "cat"], "split": "train", "group": "site_a"}, ...]`
(`label` with one name is accepted for `labels`).

`split` (train / val / test) and `group` are optional; without `split` the images get the same seeded stratified
split as class folders. Class names are the sorted set of all labels, unless `dataset.class_names` fixes them.
For `task.type='multilabel'` labels become multi-hot rows; for the other tasks each image needs exactly one label.

Separators: with `label_separator=''` (the default) a file that uses ';' anywhere is split on ';'. A file without
';' whose labels hold spaces, ',' or '|' is ambiguous ('dog cat' may be two labels or one class name): read
as class names, a list would silently become combined classes (55 classes from 10 tags, accuracy 0). So a
multi-label file like that is refused until `label_separator` says which it is, and a single-label file is
refused when the parts of such a label are labels of other rows too ('dog cat' beside 'dog' and 'cat'). Names
that `dataset.class_names` lists (or the trained classes, for `evaluate --data`) are never ambiguous.
"""

import csv
import json
import os

import numpy as np

from jaxcls.core.errors import ConfigError, DataError
from jaxcls.data import decode, split
from jaxcls.data.sources import folder_scan

SEPARATOR = ";"
SUSPECT_SEPARATORS = (" ", ",", "|")  # what users separate labels with when they do not read the format


def _records(path: str) -> list[dict]:
  """[{'path', 'labels': [...], 'split'?, 'group'?}] from the CSV or JSON file."""
  ext = os.path.splitext(path)[1].lower()
  try:
    if ext == ".json":
      with open(path) as f:
        raw = json.load(f)
      if isinstance(raw, dict):
        raw = [{"path": k, "labels": v} for k, v in raw.items()]
      if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise DataError(
          f"{path} must hold an object mapping image paths to label lists, or a list of records "
          "with 'path' and 'labels'."
        )
      rows = raw
    elif ext in (".csv", ".tsv"):
      with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
    else:
      raise ConfigError(f"dataset.labels_file={path!r} must end in .csv, .tsv or .json.")
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
    raise DataError(f"Cannot read the label file {path} ({e}); see the format in the README.") from e
  return [_record(row, path, number) for number, row in enumerate(rows, start=1)]


def _record(row: dict, path: str, number: int) -> dict:
  if "path" not in row or ("labels" not in row and "label" not in row):
    raise DataError(f"{path}, record {number}: needs a 'path' and a 'labels' field (has {sorted(row)}).")
  labels = row.get("labels", row.get("label"))
  text = None  # a CSV field (or a JSON string) is split later, once the whole file shows its separator
  if labels is None:
    labels = []
  elif isinstance(labels, str):
    text, labels = labels.strip(), []
  elif not isinstance(labels, list):
    labels = [labels]
  return {
    "path": str(row["path"]).strip(),
    "labels": [str(name) for name in labels],
    "text": text,
    "split": str(row.get("split") or "").strip(),
    "group": str(row.get("group") or "").strip(),
  }


def _split(text: str, separator: str) -> list[str]:
  parts = text.split() if separator == " " else text.split(separator)
  return [name.strip() for name in parts if name.strip()]


def _suspect(text: str) -> str:
  """The separator-like character inside a label text ('' when it has none)."""
  for char in SUSPECT_SEPARATORS:
    if char in text:
      return char
  return ""


def _split_labels(records: list[dict], separator: str, multi_label: bool, fixed, file: str) -> None:
  """Fills each record's `labels` from its text, with the given separator or, for '', the one the file shows."""
  texts = [r["text"] for r in records if r["text"]]
  if not separator:
    separator = SEPARATOR
    if not any(SEPARATOR in t for t in texts):
      _refuse_ambiguous(texts, records, multi_label, fixed, file)
  for r in records:
    if r["text"]:
      r["labels"] = _split(r["text"], separator)


def _refuse_ambiguous(texts: list[str], records: list[dict], multi_label: bool, fixed, file: str) -> None:
  """Raises when labels with spaces (',' or '|') may be lists of labels that would become combined classes."""
  known = {str(n) for n in fixed or ()}
  whole = {t for t in texts if not _suspect(t)} | {n for r in records for n in r["labels"]} | known
  for text in texts:
    char = _suspect(text)
    if not char or text in known:
      continue
    parts = _split(text, char)
    shown = "' '" if char == " " else repr(char)
    if multi_label:
      raise DataError(
        f"The label file {file} has labels like {text!r} that hold {shown} but no ';' anywhere, so "
        f"it cannot tell several labels from one class name; set dataset.label_separator={shown} if "
        f"{text!r} means {parts}, or dataset.label_separator=';' if it is one class name."
      )
    if all(part in whole for part in parts):
      raise DataError(
        f"The label file {file} has the label {text!r} while {parts} are labels of other images, so "
        f"it looks like several labels separated by {shown}, which a single-label task would read as "
        f"one combined class; set task.type='multilabel' and dataset.label_separator={shown}, or "
        f"dataset.label_separator=';' if {text!r} is one class name."
      )


def read(
  file: str, root: str, class_names, multi_label: bool, separator: str = ""
) -> tuple[list[str], np.ndarray, list[dict], tuple]:
  """(absolute image paths, labels, the records, class names) of every image the label file lists.

  `separator` is `dataset.label_separator`: '' reads ';' and refuses ambiguous spaces (see the module docstring).
  """
  file = os.path.expanduser(file)
  if not os.path.isfile(file):
    raise DataError(f"The label file {file!r} does not exist; give a CSV or JSON file of image paths and their labels.")
  if not isinstance(separator, str):
    raise ConfigError(f"dataset.label_separator={separator!r} must be a string, e.g. ';' or ' ' (spaces).")
  records = _records(file)
  if not records:
    raise DataError(f"The label file {file} lists no images.")
  _split_labels(records, separator, multi_label, class_names, file)
  for r in records:
    r["path"] = r["path"] if os.path.isabs(r["path"]) else os.path.join(os.path.expanduser(root), r["path"])
  bad = [r["path"] for r in records if os.path.splitext(r["path"])[1].lower() not in decode.EXTENSIONS]
  if bad:
    raise DataError(
      f"{len(bad)} path(s) in {file} are not image files (e.g. {bad[0]}); list only "
      f"{', '.join(decode.EXTENSIONS)} files."
    )
  names = _class_names(records, class_names, file)
  return [r["path"] for r in records], _encode(records, names, multi_label, file), records, names


def groups_of(records: list[dict]) -> np.ndarray | None:
  """Each record's group name, or None when the file gives no groups."""
  if not any(r["group"] for r in records):
    return None
  return np.asarray([r["group"] or "(none)" for r in records], object)


def scan(dataset_config, multi_label: bool) -> folder_scan.Listing:
  """The listing the label file describes: class names, per split (paths, labels) and per split groups."""
  ds = dataset_config
  paths, labels, records, names = read(
    ds.labels_file, ds.path, ds.class_names, multi_label, ds.get("label_separator", "")
  )
  groups = groups_of(records)
  parts = _split_indices(records, labels, ds, os.path.expanduser(ds.labels_file))
  splits = {name: ([paths[i] for i in idx], labels[idx]) for name, idx in parts.items()}
  return folder_scan.Listing(
    names, splits, 0, {name: groups[idx] for name, idx in parts.items()} if groups is not None else {}
  )


def _class_names(records: list[dict], fixed, file: str) -> tuple[str, ...]:
  seen = sorted({name for r in records for name in r["labels"]})
  if not fixed:
    if not seen:
      raise DataError(f"The label file {file} gives no labels at all; fill its 'labels' column.")
    return tuple(seen)
  fixed = tuple(str(n) for n in fixed)
  unknown = sorted(set(seen) - set(fixed))
  if unknown:
    raise DataError(
      f"The label file {file} uses labels {unknown[:5]} that dataset.class_names does not list; "
      "add them to class_names or fix the file."
    )
  return fixed


def _encode(records: list[dict], names: tuple[str, ...], multi_label: bool, file: str) -> np.ndarray:
  index = {name: k for k, name in enumerate(names)}
  if multi_label:
    labels = np.zeros((len(records), len(names)), np.int32)
    for row, r in enumerate(records):
      labels[row, [index[name] for name in r["labels"]]] = 1
    return labels
  wrong = [r for r in records if len(r["labels"]) != 1]
  if wrong:
    raise DataError(
      f"{len(wrong)} image(s) in {file} have {len(wrong[0]['labels'])} labels (e.g. "
      f"{wrong[0]['path']}: {wrong[0]['labels']}), but this task needs exactly one per image; set "
      "task.type='multilabel' for label sets."
    )
  return np.asarray([index[r["labels"][0]] for r in records], np.int32)


def _split_indices(records: list[dict], labels: np.ndarray, ds, file: str) -> dict[str, np.ndarray]:
  """Split name -> row indices: the file's `split` column, or a seeded stratified split."""
  given = [r["split"] for r in records]
  if any(given):
    missing = sum(1 for s in given if not s)
    if missing:
      raise DataError(
        f"{missing} image(s) in {file} have no split while others do; give every row a split "
        "(train, val or test) or none at all."
      )
    normalised = np.asarray([folder_scan.split_name(s) for s in given])
    parts = {name: np.flatnonzero(normalised == name) for name in sorted(set(normalised))}
  else:
    parts = split.held_out_parts(labels if labels.ndim == 1 else np.argmax(labels, axis=1), ds)
  for key in ("train_split", "eval_split"):
    name = folder_scan.split_name(ds[key])
    if name not in parts:
      raise ConfigError(f"dataset.{key}={ds[key]!r} is not a split of {file} (it has {', '.join(parts)}).")
  return parts
