"""The reference's input-source flags, translated together into bindings.

`--data_dir` selects the ImageNet-format TFRecord source, `--bigtable_*` the
Cloud Bigtable one, and eval_ckpt_main.py's `--imagenet_eval_glob` (with
`--imagenet_eval_label` and `--num_images`, bin/evaluator's) the image-glob
source: a flag here selects a source as well as setting it, so these are
not single aliases of `reference_flags`' table, which calls
`source_bindings`.
"""

_GLOB = "effnet_gin.data.ImageGlobSource"

# Flags that select and configure the input source, translated together.
SOURCE_FLAGS = ("data_dir", "bigtable_project", "bigtable_instance",
                "bigtable_table", "imagenet_eval_glob", "imagenet_eval_label",
                "num_images")
# Of them, eval_ckpt_main's (bin/evaluator's only).
GLOB_FLAGS = ("imagenet_eval_glob", "imagenet_eval_label", "num_images")


def _glob_bindings(imagenet_eval_glob, imagenet_eval_label, num_images):
  if not imagenet_eval_glob:
    if imagenet_eval_label or num_images is not None:
      raise ValueError("--imagenet_eval_label and --num_images need "
                       "--imagenet_eval_glob")
    return []
  if not imagenet_eval_label:
    raise ValueError(f"--imagenet_eval_glob={imagenet_eval_glob!r} needs "
                     "--imagenet_eval_label (one label per file)")
  return [
      "effnet_gin.data.build_dataset.source = @ImageGlobSource()",
      f"{_GLOB}.pattern = {imagenet_eval_glob!r}",
      f"{_GLOB}.labels_file = {imagenet_eval_label!r}",
      f"{_GLOB}.num_images = {num_images!r}",
      # Every image the glob gives, not the config's NUM_EVAL_IMAGES.
      "effnet_gin.data.build_dataset.num_eval_examples = None"
  ]


def source_bindings(*, data_dir=None, bigtable_project=None,
                    bigtable_instance=None, bigtable_table=None, project=None,
                    imagenet_eval_glob=None, imagenet_eval_label=None,
                    num_images=None):
  """Translates the input-source flags into gin bindings.

  As in the reference, `data_dir` selects the ImageNet-format TFRecord source
  in that directory and `bigtable_instance` selects Cloud Bigtable, whatever
  source the `.gin` files named; `imagenet_eval_glob` (eval_ckpt_main's,
  with its label file) selects `ImageGlobSource`. Giving two is ambiguous
  and rejected.

  Args:
    data_dir: directory of train-*/validation-* TFRecords.
    bigtable_project: project of the Bigtable instance.
    bigtable_instance: Bigtable instance holding the data.
    bigtable_table: Bigtable table (the source's default when None).
    project: the TPU's project, the default of `bigtable_project`.
    imagenet_eval_glob: eval image files (bin/evaluator).
    imagenet_eval_label: their label file.
    num_images: evaluate the first this many files (negative: all).

  Returns:
    A list of gin binding strings.

  Raises:
    ValueError: for contradictory or incomplete flags.
  """
  given = [(name, value)
           for name, value in (("data_dir", data_dir), ("bigtable_instance",
                                                        bigtable_instance),
                               ("imagenet_eval_glob", imagenet_eval_glob))
           if value]
  if len(given) > 1:
    raise ValueError(" and ".join(
        f"--{name}={value!r}" for name, value in given) +
                     " name input sources; give one of them")
  glob = _glob_bindings(imagenet_eval_glob, imagenet_eval_label, num_images)
  if glob:
    return glob
  if data_dir:
    return [
        "effnet_gin.data.build_dataset.source = @TFRecordSource()",
        f"TFRecordSource.data_dir = {data_dir!r}"
    ]
  if not bigtable_instance:
    if bigtable_project or bigtable_table:
      raise ValueError("--bigtable_project and --bigtable_table need "
                       "--bigtable_instance")
    return []
  bt_project = bigtable_project or project
  if not bt_project:
    raise ValueError(f"--bigtable_instance={bigtable_instance!r} needs "
                     "--bigtable_project or --project")
  bindings = [
      "effnet_gin.data.build_dataset.source = @BigtableSource()",
      f"BigtableSource.project = {bt_project!r}",
      f"BigtableSource.instance = {bigtable_instance!r}"
  ]
  if bigtable_table:
    bindings.append(f"BigtableSource.table = {bigtable_table!r}")
  return bindings
