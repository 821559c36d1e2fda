"""`TFDSSource`: an already prepared TensorFlow Datasets dataset on local disk.

Nothing is ever downloaded: the dataset must have been prepared into
`tfds_data_dir` beforehand (`tfds build` or `builder.download_and_prepare()`
on a machine with network access). Images are read undecoded, so JPEGs go
through the pipeline's fused decode-and-crop like TFRecord files.

Each input pipeline reads an even slice of the split (`tfds.even_splits`), so
shard sizes are known without counting.
"""
import tensorflow as tf

from effnet_gin.data.sources import protocol


def _tfds():
  # Imported lazily: importing tensorflow_datasets is slow and only this
  # source needs it.
  import tensorflow_datasets  # pylint: disable=g-import-not-at-top
  return tensorflow_datasets


class TFDSSource(protocol.Source):
  """A prepared TFDS image classification dataset."""

  def __init__(self, name, tfds_data_dir=None, *, train_split="train",
               eval_split="validation", image_key="image", label_key="label"):
    """Opens the prepared dataset.

    Args:
      name: TFDS name, optionally with config/version ('imagenet2012:5.1.0').
      tfds_data_dir: the directory it was prepared into (TFDS's default
        directory when None).
      train_split: TFDS split used as 'train'.
      eval_split: TFDS split used as 'eval'.
      image_key: feature holding the image.
      label_key: feature holding the 0-based integer label.

    Raises:
      FileNotFoundError: the dataset is unknown or not prepared there.
    """
    tfds = _tfds()
    try:
      self._builder = tfds.builder(name, data_dir=tfds_data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is neither registered nor prepared in "
          f"tfds_data_dir={tfds_data_dir!r}") from e
    if not self._builder.is_prepared():
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is not prepared in {self._builder.data_dir!r}"
          "; prepare it beforehand (e.g. `tfds build`), effnet_gin never "
          "downloads")
    self.name = name
    self.splits = {"train": train_split, "eval": eval_split}
    for split in self.splits.values():
      if split not in self._builder.info.splits:
        raise ValueError(
            f"TFDS dataset {name!r} has no split {split!r}; it has "
            f"{sorted(self._builder.info.splits)}")
    self.image_key = image_key
    self.label_key = label_key

  def _pipeline_split(self, split, num_pipelines, pipeline_id):
    protocol.check_split(split)
    return _tfds().even_splits(self.splits[split], n=num_pipelines)[pipeline_id]

  def examples(self, split, input_context=None, *, is_training, seed=None):
    """See `Source.examples`."""
    tfds = _tfds()
    num_pipelines, pipeline_id = protocol.pipeline_shard(input_context)
    dataset = self._builder.as_dataset(
        split=self._pipeline_split(split, num_pipelines,
                                   pipeline_id), shuffle_files=is_training,
        decoders={self.image_key: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed))
    return dataset.map(
        lambda features: {
            "image": features[self.image_key],
            "label": tf.cast(features[self.label_key], tf.int32),
        }, num_parallel_calls=tf.data.AUTOTUNE)

  def num_examples(self, split):
    protocol.check_split(split)
    return self._builder.info.splits[self.splits[split]].num_examples

  def examples_per_pipeline(self, split, num_input_pipelines):
    return [
        self._builder.info.splits[self._pipeline_split(split,
                                                       num_input_pipelines,
                                                       i)].num_examples
        for i in range(num_input_pipelines)
    ]
