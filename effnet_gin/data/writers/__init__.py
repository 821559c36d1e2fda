"""Tools that write the files and tables the sources read.

  fake_imagenet.py          write_fake_imagenet: the generated images as
                            ImageNet-format JPEG TFRecords
                            (bin/make_fake_imagenet)
  ilsvrc.py                 convert_raw_imagenet: raw ILSVRC2012 as the
                            reference's TFRecords (bin/imagenet_to_tfrecords)
  images_to_tfrecords.py    convert_image_folder: an image folder as TFRecords
                            (bin/images_to_tfrecords)
  tfrecords_to_bigtable.py  load_tfrecords_to_bigtable: TFRecords into a
                            Bigtable table (bin/tfrecords_to_bigtable)
  tfrecord_shards.py        write_tfrecord_shards and write_shard (atomic),
                            the shard writers of the first three

Writers depend on sources (for the formats), never the other way round.
Import the module you need: this package imports none, so that importing
`effnet_gin.data` does not load the Bigtable admin client.
"""
