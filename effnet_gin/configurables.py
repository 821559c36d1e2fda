"""The one place that registers effnet_gin's gin configurables.

Importing this module imports every module whose builders carry
`@gin.configurable`, so a parsed `.gin` file can name them. Layers and tensor
functions stay gin-free; only the builders listed below are configurable.

Registered names (each also reachable with its module prefix, e.g.
`effnet_gin.model.build_model`):
  model:  build_model
  data:   build_dataset, Preprocessing (crop and resize settings, read by
          build_dataset and export alike) and the sources TFRecordSource,
          RandomNoiseSource, LearnableShapesSource, TFDSSource,
          ImageFolderSource, BigtableSource (FakeSource and SyntheticSource:
          their deprecated old names)
  train:  build_strategy, build_schedule, build_optimizer,
          ExponentialMovingAverage, train, evaluate, export
"""
# pylint: disable=unused-import
from effnet_gin import data  # noqa: F401
from effnet_gin import model  # noqa: F401
from effnet_gin import train  # noqa: F401
