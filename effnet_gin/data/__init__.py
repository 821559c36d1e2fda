"""Input pipelines: sources of labelled images and `build_dataset`.

Sources (gin-configurable as `effnet_gin.data.<Name>`) implement the `Source`
protocol of sources.py: `examples(split, input_context, *, is_training, seed)`
gives one pipeline's shard as {'image': encoded bytes or uint8 [H, W, 3],
'label': int32, 0-based}. `build_dataset` (gin: `effnet_gin.data.build_dataset`)
turns a source into per-replica batches:
  train: (images float32 [b, S, S, 3] on the 0..255 scale, labels int32 [b]),
         forever;
  eval:  (images, labels, weights float32 [b]), finite, padded with weight 0.
Their crops and resize are a `Preprocessing` (gin:
`effnet_gin.data.Preprocessing`), which the exported SavedModel's image-bytes
signature applies too.

Data tools: `write_fake_imagenet` (bin/make_fake_imagenet) and
`image_folder.convert_image_folder` (bin/images_to_tfrecords).
"""
from effnet_gin.data.augment import autoaugment
from effnet_gin.data.augment import mixup
from effnet_gin.data.augment import randaugment
from effnet_gin.data.augment_recipes import randaugment_magnitude_for
from effnet_gin.data.bigtable import BigtableSource
from effnet_gin.data.image_folder import ImageFolderSource
from effnet_gin.data.pipeline import build_dataset
from effnet_gin.data.pipeline import num_eval_steps
from effnet_gin.data.preprocessing import preprocess_for_eval
from effnet_gin.data.preprocessing import preprocess_for_train
from effnet_gin.data.preprocessing import Preprocessing
from effnet_gin.data.sources import parse_imagenet_example
from effnet_gin.data.sources import serialize_imagenet_example
from effnet_gin.data.sources import Source
from effnet_gin.data.synthetic import FakeSource
from effnet_gin.data.synthetic import LearnableShapesSource
from effnet_gin.data.synthetic import RandomNoiseSource
from effnet_gin.data.synthetic import SyntheticSource
from effnet_gin.data.synthetic import write_fake_imagenet
from effnet_gin.data.tfds_source import TFDSSource
from effnet_gin.data.tfrecord_source import TFRecordSource
