"""ArrayDataset.train_chunks: the chunks `prefetch.chunks` stacks from `train_batches`, gathered in one indexing."""

import itertools

import numpy as np
import pytest

from jaxcls.data import in_memory, prefetch
from jaxcls.data.base import Dataset


def dataset(num_train=70, labels=None, process_index=0, process_count=1, memmap_dir=None):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_train, 5, 4, 3), dtype=np.uint8)
  train_labels = rng.integers(0, 4, num_train) if labels is None else labels
  if memmap_dir is not None:
    mapped = np.lib.format.open_memmap(str(memmap_dir / "images.npy"), "w+", np.uint8, images.shape)
    mapped[:] = images
    mapped.flush()
    images = np.load(str(memmap_dir / "images.npy"), mmap_mode="r")
  eval_labels = np.arange(4) if labels is None or labels.ndim == 1 else np.eye(4, dtype=labels.dtype)
  ds = in_memory.from_arrays(images, train_labels, images[:4], eval_labels)
  ds.process_index, ds.process_count = process_index, process_count
  return ds


def stacked(ds, batch, k, start_step, seed, count):
  return list(
    itertools.islice(prefetch.chunks(ds.train_batches(batch, start_step=start_step, seed=seed), k, start_step), count)
  )


def assert_same(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want, strict=True):
    assert set(g) == set(w)
    for name in w:
      assert g[name].dtype == w[name].dtype and g[name].shape == w[name].shape, name
      np.testing.assert_array_equal(g[name], w[name], err_msg=name)


@pytest.mark.parametrize(
  "batch, k, start_step, seed",
  [
    (8, 4, 0, 0),  # 8 steps per epoch: chunks 2 and 3 are the next epoch
    (8, 3, 7, 1),  # a resumed start inside a chunk that spans an epoch boundary (steps 6, 7 | 8)
    (16, 5, 11, 2),  # 4 steps per epoch: every chunk spans one
    (6, 64, 70, 0),  # a long chunk over many epochs, resumed at step 70
  ],
)
def test_chunks_equal_the_stacked_batches(batch, k, start_step, seed):
  ds = dataset()
  got = list(itertools.islice(ds.train_chunks(batch, k, start_step=start_step, seed=seed), 4))
  assert_same(got, stacked(ds, batch, k, start_step, seed, 4))


def test_balanced_sampling_multi_hot_labels_a_second_process_and_memory_mapped_images(tmp_path):
  ds = dataset().with_sampling("balanced")
  assert_same(list(itertools.islice(ds.train_chunks(8, 3, start_step=2, seed=3), 5)), stacked(ds, 8, 3, 2, 3, 5))
  multi_hot = (np.random.default_rng(1).random((70, 4)) < 0.4).astype(np.int32)
  multi_hot[:4] = np.eye(4, dtype=np.int32)  # every label present
  ds = dataset(labels=multi_hot)
  assert_same(list(itertools.islice(ds.train_chunks(8, 4, start_step=5, seed=0), 3)), stacked(ds, 8, 4, 5, 0, 3))
  second = dataset(process_index=1, process_count=2)
  got = list(itertools.islice(second.train_chunks(8, 4, start_step=0, seed=0), 3))
  assert got[0]["image"].shape == (4, 4, 5, 4, 3)  # the local half of each global batch
  assert_same(got, stacked(second, 8, 4, 0, 0, 3))
  mapped = dataset(memmap_dir=tmp_path)
  assert isinstance(mapped._train_images, np.memmap)  # pylint: disable=protected-access
  assert_same(
    list(itertools.islice(mapped.train_chunks(8, 4, start_step=1, seed=0), 3)), stacked(mapped, 8, 4, 1, 0, 3)
  )


def test_bad_arguments_fail_at_the_call_and_other_sources_say_none():
  ds = dataset()
  with pytest.raises(ValueError, match="steps_per_chunk=0 must be at least 1"):
    ds.train_chunks(8, 0)
  with pytest.raises(Exception, match="start_step"):
    ds.train_chunks(8, 4, start_step=-1)

  class Plain(Dataset):
    info = ds.info

    def train_batches(self, global_batch_size, *, start_step=0, seed=0):
      return ds.train_batches(global_batch_size, start_step=start_step, seed=seed)

    def eval_batches(self, global_batch_size):
      return ds.eval_batches(global_batch_size)

    def num_eval_batches(self, global_batch_size):
      return ds.num_eval_batches(global_batch_size)

  assert Plain().train_chunks(8, 4) is None  # the loop stacks its batches instead

  class Reversed(in_memory.ArrayDataset):  # batches of its own: its chunks are its stacked batches, not the arrays'
    def train_batches(self, global_batch_size, *, start_step=0, seed=0):
      for batch in super().train_batches(global_batch_size, start_step=start_step, seed=seed):
        yield {**batch, "image": batch["image"][::-1]}

  mine = Reversed(ds.info, (ds._train_images, ds._train_labels), (ds._eval_images, ds._eval_labels))  # pylint: disable=protected-access
  assert mine.train_chunks(8, 4) is None
