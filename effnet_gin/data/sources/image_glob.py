"""Image files matched by a glob, labelled by a text file: `ImageGlobSource`.

The reference's `eval_ckpt_main.py --runmode=imagenet` evaluates
`sorted(glob(imagenet_eval_glob))` against `imagenet_eval_label`, a text
file of one integer label per line, line i for the i-th file in sorted
order, 0-based (its `ILSVRC2012_validation_ground_truth.txt`: the position
of the synset in the sorted synset list). `num_images` takes the first that
many (the reference's default is 5000; here every file unless told).

The files are the eval split; there is no train split.
"""
import tensorflow as tf

from effnet_gin.data.sources import protocol
from effnet_gin.data.sources import image_folder


def read_labels(labels_file, label_offset=0):
  """The integer labels of `labels_file`, one per non-empty line.

  Args:
    labels_file: a text file (local or gs://).
    label_offset: subtracted from every label (1 for 1-based files).

  Returns:
    A list of ints.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: naming the file and line of a label that is not an integer.
  """
  if not tf.io.gfile.exists(labels_file):
    raise FileNotFoundError(f"label file {labels_file!r} does not exist")
  with tf.io.gfile.GFile(labels_file) as f:
    lines = f.read().splitlines()
  labels = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      labels.append(int(line.strip()) - label_offset)
    except ValueError:
      raise ValueError(f"{labels_file}, line {number}: the label {line!r} is "
                       "not an integer") from None
  return labels


class ImageGlobSource(protocol.Source):
  """Eval images `sorted(glob(pattern))`, labels from `labels_file`."""

  def __init__(self, pattern, labels_file, num_images=None, label_offset=0):
    """Lists the files and reads the labels.

    Args:
      pattern: a file glob (local or gs://), e.g. /data/val/*.JPEG.
      labels_file: one integer label per line, for the files in sorted
        order.
      num_images: evaluate the first this many files; None or a negative
        number: all of them.
      label_offset: subtracted from each label (the labels must come out
        0-based: 1 for a file of 1-based labels).

    Raises:
      FileNotFoundError: nothing matches `pattern`, or no label file.
      ValueError: the label file's line count differs from the number of
        files matched, or a label is not an integer.
    """
    paths = sorted(tf.io.gfile.glob(pattern))
    if not paths:
      raise FileNotFoundError(f"no image file matches {pattern!r}")
    labels = read_labels(labels_file, label_offset)
    if len(labels) != len(paths):
      raise ValueError(f"{labels_file!r} has {len(labels)} labels but "
                       f"{pattern!r} matches {len(paths)} files: one label "
                       "per file, in sorted file order")
    if num_images is not None and num_images >= 0:
      paths, labels = paths[:num_images], labels[:num_images]
    if not paths:
      raise ValueError(f"num_images={num_images} leaves no image to evaluate")
    self.pattern = pattern
    self.labels_file = labels_file
    self._paths = paths
    self._labels = labels

  def _check(self, split):
    protocol.check_split(split)
    if split != "eval":
      raise ValueError(f"ImageGlobSource({self.pattern!r}) holds eval images "
                       "only")

  def examples(self, split, input_context=None, *, is_training, seed=None):
    """See `Source.examples`; pipeline i reads files i, i + k, ...."""
    del is_training, seed  # Evaluated in file order.
    self._check(split)
    num_pipelines, pipeline_id = protocol.pipeline_shard(input_context)
    return image_folder.labelled_files(self._paths[pipeline_id::num_pipelines],
                                       self._labels[pipeline_id::num_pipelines])

  def num_examples(self, split):
    self._check(split)
    return len(self._paths)

  def examples_per_pipeline(self, split, num_input_pipelines):
    return protocol.shard_sizes(self.num_examples(split), num_input_pipelines)
