"""Input pipelines: labelled images from a source, through the pipeline
stages, to per-replica batches.

The flow, and where each piece lives:

  sources/   readers (`Source` protocol, sources/protocol.py): TFRecordSource,
             TFDSSource, ImageFolderSource, ImageGlobSource, BigtableSource and the generated
             RandomNoiseSource / LearnableShapesSource. `examples(split,
             input_context, *, is_training, seed)` gives one input
             pipeline's shard as {'image': encoded bytes or uint8 [H, W, 3],
             'label': int32, 0-based}. A new source is a new module here.
      |
      v
  pipeline.py       `build_dataset` (gin: `effnet_gin.data.build_dataset`)
                    shards, shuffles and batches, calling the stages:
  preprocessing.py  crops and resize, a `Preprocessing` (gin:
                    `effnet_gin.data.Preprocessing`) that the exported
                    SavedModel's image-bytes signature applies too;
  augment/          AutoAugment / RandAugment per image (policies.py), mixup,
                    CutMix and random erasing per batch (mixing.py).
      |
      v
  batches    train: (images float32 [b, S, S, 3] on the 0..255 scale,
                     labels int32 [b]), forever;
             eval:  (images, labels, weights float32 [b]), finite, padded
                    with weight 0.

  holdout.py  the train and eval image counts when training shards are held
             out as the eval split (`images_after_holdout`).

  writers/   make the files and tables the sources read: fake ImageNet
             TFRecords (`write_fake_imagenet`, bin/make_fake_imagenet), an
             image folder as TFRecords (bin/images_to_tfrecords), TFRecords
             into Bigtable (bin/tfrecords_to_bigtable).

Mean/std normalisation is not here: the model's first layer applies it.
"""
from effnet_gin.data.augment import autoaugment
from effnet_gin.data.augment import mixup
from effnet_gin.data.augment import randaugment
from effnet_gin.data.augment import randaugment_magnitude_for
from effnet_gin.data.holdout import holdout_counts
from effnet_gin.data.holdout import images_after_holdout
from effnet_gin.data.pipeline import build_dataset
from effnet_gin.data.pipeline import num_eval_steps
from effnet_gin.data.preprocessing import preprocess_for_eval
from effnet_gin.data.preprocessing import preprocess_for_train
from effnet_gin.data.preprocessing import Preprocessing
from effnet_gin.data.sources import BigtableSource
from effnet_gin.data.sources import FakeSource
from effnet_gin.data.sources import ImageFolderSource
from effnet_gin.data.sources import ImageGlobSource
from effnet_gin.data.sources import LearnableShapesSource
from effnet_gin.data.sources import parse_imagenet_example
from effnet_gin.data.sources import RandomNoiseSource
from effnet_gin.data.sources import serialize_imagenet_example
from effnet_gin.data.sources import Source
from effnet_gin.data.sources import SOURCE_CLASSES
from effnet_gin.data.sources import SyntheticSource
from effnet_gin.data.sources import TFDSSource
from effnet_gin.data.sources import TFRecordSource
from effnet_gin.data.writers.fake_imagenet import write_fake_imagenet
