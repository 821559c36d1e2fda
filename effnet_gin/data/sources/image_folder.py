"""Folders of images with one sub-folder per class: `ImageFolderSource`.

Class index = position of the sub-folder name in sorted order.
`writers.images_to_tfrecords.convert_image_folder` writes such a folder as
ImageNet-format TFRecord shards (faster to read, and `gs://`-friendly) with
the same class indices.
"""
import os

import tensorflow as tf

from effnet_gin.data.sources import protocol

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def class_names(root):
  """The sorted class sub-folder names of `root`.

  Raises:
    FileNotFoundError: `root` is missing or has no sub-folders.
  """
  if not tf.io.gfile.isdir(root):
    raise FileNotFoundError(f"image folder does not exist: {root!r}")
  names = sorted(
      name.rstrip("/")
      for name in tf.io.gfile.listdir(root)
      if tf.io.gfile.isdir(os.path.join(root, name)))
  if not names:
    raise FileNotFoundError(f"image folder {root!r} has no class sub-folders")
  return names


def list_images(root, names):
  """(path, label) of every image under `root`/<class name>, sorted.

  Args:
    root: folder with one sub-folder per class.
    names: class names in label order; sub-folders of `root` must be among
      them.

  Returns:
    list of (path, 0-based label) pairs, sorted by class then file name.

  Raises:
    FileNotFoundError: no images found.
    ValueError: a sub-folder is not one of `names`.
  """
  label_of = {name: label for label, name in enumerate(names)}
  images = []
  for name in class_names(root):
    if name not in label_of:
      raise ValueError(f"class folder {name!r} in {root!r} is not one of the "
                       f"{len(names)} known classes")
    folder = os.path.join(root, name)
    images.extend((os.path.join(folder, file_name), label_of[name])
                  for file_name in sorted(tf.io.gfile.listdir(folder))
                  if file_name.lower().endswith(IMAGE_EXTENSIONS))
  if not images:
    raise FileNotFoundError(
        f'no images ({", ".join(IMAGE_EXTENSIONS)}) in the class folders of '
        f"{root!r}")
  return images


class ImageFolderSource(protocol.Source):
  """Images in `root`/<class>/, eval images in `eval_root`/<class>/."""

  def __init__(self, root, eval_root=None):
    """Lists the images.

    Args:
      root: training folder, one sub-folder per class; sorted sub-folder
        names give the class indices.
      eval_root: optional eval folder whose sub-folders carry the same class
        names (a subset is fine).

    Raises:
      FileNotFoundError: a folder is missing or holds no images.
      ValueError: `eval_root` has a class that `root` lacks.
    """
    self.class_names = class_names(root)
    self._images = {"train": list_images(root, self.class_names)}
    if eval_root is not None:
      self._images["eval"] = list_images(eval_root, self.class_names)
    self.root = root
    self.eval_root = eval_root

  def _split_images(self, split):
    protocol.check_split(split)
    if split not in self._images:
      raise ValueError(f"ImageFolderSource({self.root!r}) has no eval split; "
                       "set eval_root")
    return self._images[split]

  def examples(self, split, input_context=None, *, is_training, seed=None):
    """See `Source.examples`; pipeline i reads images i, i + k, ...."""
    images = self._split_images(split)
    num_pipelines, pipeline_id = protocol.pipeline_shard(input_context)
    shard = images[pipeline_id::num_pipelines]
    paths = [path for path, _ in shard]
    labels = [label for _, label in shard]
    return labelled_files(paths, labels, shuffle=is_training, seed=seed)

  def num_examples(self, split):
    return len(self._split_images(split))

  def examples_per_pipeline(self, split, num_input_pipelines):
    return protocol.shard_sizes(self.num_examples(split), num_input_pipelines)


def labelled_files(paths, labels, *, shuffle=False, seed=None):
  """Examples {'image': the file's bytes, 'label'} of image files.

  Args:
    paths: the files, in order.
    labels: one int label per file.
    shuffle: shuffle the files, anew each pass.
    seed: the shuffle's seed (None: unseeded).
  """
  dataset = tf.data.Dataset.from_tensor_slices(
      (tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))
  if shuffle:
    dataset = dataset.shuffle(max(1, len(paths)), seed=seed,
                              reshuffle_each_iteration=True)
  return dataset.map(
      lambda path, label: {
          "image": tf.io.read_file(path),
          "label": label
      }, num_parallel_calls=tf.data.AUTOTUNE)
