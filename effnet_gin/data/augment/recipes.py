"""The reference's per-variant augmentation settings, for the .gin files.

The reference README trains RandAugment with 2 layers at magnitude 10, and
asks for magnitude 17 on EfficientNet-B5 and 28 on B7 and B8
(`--randaug_num_layers=2 --randaug_magnitude=…`); `randaugment.gin` binds the
magnitude to `randaugment_magnitude_for(%MODEL_NAME)`.
"""

DEFAULT_RANDAUGMENT_MAGNITUDE = 10
RANDAUGMENT_MAGNITUDES = {
    "efficientnet-b5": 17,
    "efficientnet-b7": 28,
    "efficientnet-b8": 28,
}


def randaugment_magnitude_for(variant):
  """The reference's RandAugment magnitude for `variant` (10 unless listed)."""
  return RANDAUGMENT_MAGNITUDES.get(variant, DEFAULT_RANDAUGMENT_MAGNITUDE)
