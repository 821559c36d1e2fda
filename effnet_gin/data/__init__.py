"""Input pipelines: sources of labelled images and `build_dataset`.

Sources (gin-configurable as `effnet_gin.data.<Name>`) implement the `Source`
protocol of sources.py; `build_dataset` turns one into per-replica batches.
"""
from effnet_gin.data.augment import autoaugment
from effnet_gin.data.augment import mixup
from effnet_gin.data.augment import randaugment
from effnet_gin.data.bigtable import BigtableSource
from effnet_gin.data.image_folder import ImageFolderSource
from effnet_gin.data.pipeline import build_dataset
from effnet_gin.data.pipeline import num_eval_steps
from effnet_gin.data.preprocessing import normalize
from effnet_gin.data.preprocessing import preprocess_for_eval
from effnet_gin.data.preprocessing import preprocess_for_train
from effnet_gin.data.sources import parse_imagenet_example
from effnet_gin.data.sources import serialize_imagenet_example
from effnet_gin.data.sources import Source
from effnet_gin.data.synthetic import FakeSource
from effnet_gin.data.synthetic import SyntheticSource
from effnet_gin.data.synthetic import write_fake_imagenet
from effnet_gin.data.tfds_source import TFDSSource
from effnet_gin.data.tfrecord_source import TFRecordSource
