"""Readers of labelled images: one module per kind of storage.

Every reader implements the `Source` protocol of protocol.py and is
gin-configurable as `effnet_gin.data.<ClassName>`:

  tfrecord.py      TFRecordSource         ImageNet-format TFRecord shards
  tfds.py          TFDSSource             a prepared TensorFlow Datasets dataset
  image_folder.py  ImageFolderSource      <root>/<class>/<image> folders
  image_glob.py    ImageGlobSource        eval files of a glob, labels from a
                                          text file (eval_ckpt_main's)
  bigtable.py      BigtableSource         one tf.Example per Cloud Bigtable row
  generated.py     RandomNoiseSource,     images generated in-graph, no files
                   LearnableShapesSource

imagenet_example.py parses (and, for the writers, serializes) the ImageNet
tf.Example that TFRecord files and Bigtable rows hold; bigtable_rows.py is the
Bigtable row layout and scans that BigtableSource and the loader share.

A new reader is a new module here with one `Source` subclass, exported from
`effnet_gin/data/__init__.py` and listed in `effnet_gin/cli.py`'s
`_source_classes`.
"""
from effnet_gin.data.sources.bigtable import BigtableSource
from effnet_gin.data.sources.generated import FakeSource
from effnet_gin.data.sources.generated import LearnableShapesSource
from effnet_gin.data.sources.generated import RandomNoiseSource
from effnet_gin.data.sources.generated import SyntheticSource
from effnet_gin.data.sources.image_folder import ImageFolderSource
from effnet_gin.data.sources.image_glob import ImageGlobSource
from effnet_gin.data.sources.imagenet_example import parse_imagenet_example
from effnet_gin.data.sources.imagenet_example import serialize_imagenet_example
from effnet_gin.data.sources.protocol import check_split
from effnet_gin.data.sources.protocol import pipeline_context
from effnet_gin.data.sources.protocol import pipeline_shard
from effnet_gin.data.sources.protocol import shard_sizes
from effnet_gin.data.sources.protocol import Source
from effnet_gin.data.sources.protocol import SPLITS
from effnet_gin.data.sources.tfds import TFDSSource
from effnet_gin.data.sources.tfrecord import TFRecordSource

# Every source a pipeline can read from (the deprecated aliases aside): the
# one list the command line checks a config's source against.
SOURCE_CLASSES = (TFRecordSource, RandomNoiseSource, LearnableShapesSource,
                  TFDSSource, ImageFolderSource, BigtableSource,
                  ImageGlobSource)
