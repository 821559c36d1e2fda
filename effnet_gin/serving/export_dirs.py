"""Writing an export directory so that a failed export never loses a model.

Every export (SavedModel, TFLite, ONNX) is written into a staging directory
beside `export_dir` (`<export_dir>.partial-<id>`) and moved into place only
once it is complete:

* `export_dir` absent: the staging directory is renamed to it;
* `export_dir` present without a model: the staged files are moved into it
  (nothing already there is touched; a name clash is refused);
* `export_dir` holding a model: refused unless `overwrite`; with it, the old
  directory is renamed aside (`<export_dir>.replaced-<id>`), the staging
  directory renamed into place, and only then is the old one deleted.

An exception while exporting deletes the staging directory and leaves
`export_dir` as it was. A crash between the two renames of an overwrite (a
moment, locally) leaves the previous model intact in
`<export_dir>.replaced-<id>`, and the log says where. On gs:// a directory
rename copies objects one by one, so there the swap is not instantaneous, but
the complete new model exists before the old one is removed.
"""
import contextlib
import uuid

from absl import logging
import tensorflow as tf

from effnet_gin.checkpoints import disk_space
from effnet_gin.serving import formats

# What marks a directory as holding an exported model.


def existing_model(export_dir):
  """The model file `export_dir` already holds, or None."""
  for name in sorted(set(formats.MODEL_FILES.values())):
    if tf.io.gfile.exists(f"{export_dir}/{name}"):
      return name
  return None


def check_destination(export_dir, overwrite):
  """Fails early when `export_dir` holds a model and `overwrite` is off.

  Raises:
    ValueError: for an empty export_dir.
    FileExistsError: when export_dir already holds a model (named) and
      `overwrite` is False.
  """
  if not export_dir:
    raise ValueError("export needs an export_dir (--export_dir)")
  held = existing_model(export_dir)
  if held and not overwrite:
    raise FileExistsError(
        f"{export_dir!r} already holds a model ({held}); choose a new "
        "export_dir or pass --overwrite (export.overwrite=True), which "
        "replaces it once the new export is complete")


def _sibling(export_dir, tag):
  return f"{export_dir.rstrip('/')}.{tag}-{uuid.uuid4().hex[:8]}"


def _move_contents(source_dir, target_dir):
  names = tf.io.gfile.listdir(source_dir)
  clashes = [
      n for n in names if tf.io.gfile.exists(f"{target_dir}/{n.rstrip('/')}")
  ]
  if clashes:
    raise FileExistsError(f"{target_dir!r} already has {sorted(clashes)}; "
                          "choose a new export_dir")
  for name in names:
    name = name.rstrip("/")
    tf.io.gfile.rename(f"{source_dir}/{name}", f"{target_dir}/{name}")
  tf.io.gfile.rmtree(source_dir)


def _swap_in(staging, export_dir):
  """Moves the complete export in `staging` to `export_dir`."""
  if not tf.io.gfile.exists(export_dir):
    tf.io.gfile.rename(staging, export_dir)
    return
  if existing_model(export_dir) is None:
    _move_contents(staging, export_dir)
    return
  replaced = _sibling(export_dir, "replaced")
  tf.io.gfile.rename(export_dir, replaced)
  logging.info("Previous export moved to %s while the new one moves in",
               replaced)
  tf.io.gfile.rename(staging, export_dir)
  tf.io.gfile.rmtree(replaced)


def _out_of_space(export_dir):
  """The one line for an export that ran out of space."""
  parent = export_dir.rstrip("/").rsplit("/", 1)[0] or "/"
  held = existing_model(export_dir)
  need = disk_space.tree_size(export_dir) if held else 0
  kept = (f"the previous export in {export_dir} is untouched"
          if held else f"nothing was written to {export_dir}")
  return (f"no space left to export to {export_dir} (an export takes "
          f"{disk_space.describe_need(parent, need)}); {kept}: free space "
          "and rerun")


@contextlib.contextmanager
def staged_export(export_dir, *, overwrite=False):
  """Yields a fresh directory to write an export into; publishes it after.

  Args:
    export_dir: the final directory (local or gs://).
    overwrite: replace a model export_dir already holds.

  Yields:
    The staging directory's path (created, empty).

  Raises:
    FileExistsError: see `check_destination`, checked before and after the
      export is written.
    disk_space.OutOfSpaceError: the disk filled up while exporting; the
      staging directory is deleted and export_dir left as it was.
  """
  check_destination(export_dir, overwrite)
  staging = _sibling(export_dir, "partial")
  try:
    tf.io.gfile.makedirs(staging)
    yield staging
    check_destination(export_dir, overwrite)
    _swap_in(staging, export_dir)
  except disk_space.WRITE_ERRORS as err:
    if not disk_space.is_out_of_space(err):
      raise
    raise disk_space.OutOfSpaceError(_out_of_space(export_dir)) from err
  finally:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
