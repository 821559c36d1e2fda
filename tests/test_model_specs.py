"""Tests for effnet_gin.model.specs: the block table, variants and rounding."""
import dataclasses
import os

import pytest

from effnet_gin.model import specs


@pytest.mark.parametrize(
    "filters, width, expected",
    [
        (32, 1.0, 32),
        (32, 1.1, 32),  # 35.2 rounds down to 32, which is within 10%.
        (1280, 2.0, 2560),
        (1280, 1.2, 1536),
        (16, 0.25, 8),  # never below the divisor.
        (119, 0.1, 16),  # 11.9 would round to 8, more than 10% below: +8.
        (112, 1.4, 160),  # 156.8 rounds to 160.
    ])
def test_round_filters(filters, width, expected):
  assert specs.round_filters(filters, width) == expected


@pytest.mark.parametrize("repeats, depth, expected", [(1, 1.0, 1), (3, 1.4, 5),
                                                      (4, 3.1, 13), (2, 1.1, 3),
                                                      (1, 0.25, 1)])
def test_round_repeats(repeats, depth, expected):
  assert specs.round_repeats(repeats, depth) == expected


def test_b0_block_table_is_the_paper_table_and_immutable():
  rows = [(b.repeats, b.kernel_size, b.strides, b.expand_ratio, b.input_filters,
           b.output_filters, b.se_ratio) for b in specs.B0_BLOCKS]
  assert rows == [(1, 3, 1, 1, 32, 16, 0.25), (2, 3, 2, 6, 16, 24, 0.25),
                  (2, 5, 2, 6, 24, 40, 0.25), (3, 3, 2, 6, 40, 80, 0.25),
                  (3, 5, 1, 6, 80, 112, 0.25), (4, 5, 2, 6, 112, 192, 0.25),
                  (1, 3, 1, 6, 192, 320, 0.25)]
  assert isinstance(specs.B0_BLOCKS, tuple)
  with pytest.raises(dataclasses.FrozenInstanceError):
    specs.B0_BLOCKS[0].repeats = 2


@pytest.mark.parametrize("name, width, depth, resolution, dropout", [
    ("efficientnet-b0", 1.0, 1.0, 224, 0.2),
    ("efficientnet-b1", 1.0, 1.1, 240, 0.2),
    ("efficientnet-b2", 1.1, 1.2, 260, 0.3),
    ("efficientnet-b3", 1.2, 1.4, 300, 0.3),
    ("efficientnet-b4", 1.4, 1.8, 380, 0.4),
    ("efficientnet-b5", 1.6, 2.2, 456, 0.4),
    ("efficientnet-b6", 1.8, 2.6, 528, 0.5),
    ("efficientnet-b7", 2.0, 3.1, 600, 0.5),
    ("efficientnet-b8", 2.2, 3.6, 672, 0.5),
    ("efficientnet-l2", 4.3, 5.3, 800, 0.5),
    ("efficientnet-lite0", 1.0, 1.0, 224, 0.2),
    ("efficientnet-lite1", 1.0, 1.1, 240, 0.2),
    ("efficientnet-lite2", 1.1, 1.2, 260, 0.3),
    ("efficientnet-lite3", 1.2, 1.4, 280, 0.3),
    ("efficientnet-lite4", 1.4, 1.8, 300, 0.3),
])
def test_variant_table(name, width, depth, resolution, dropout):
  spec = specs.get_variant(name)
  assert (spec.width_coefficient, spec.depth_coefficient, spec.resolution,
          spec.dropout_rate) == (width, depth, resolution, dropout)
  assert spec.survival_prob == 0.8
  assert specs.default_resolution(name) == resolution
  lite = "lite" in name
  assert spec.activation == ("relu6" if lite else "swish")
  assert spec.use_se is not lite
  assert spec.fix_stem_and_head is lite
  assert spec.fix_first_last_repeats is lite
  assert spec.input_normalization == ("lite" if lite else "imagenet")


def test_variants_are_exactly_the_reference_and_automl_v2_names():
  # The 51 names of the reference's model_builder_factory, as listed by the
  # reference-written param_counts.tsv fixture.
  with open(
      os.path.join(os.path.dirname(__file__), "fixtures",
                   "reference_checkpoints", "param_counts.tsv")) as f:
    names = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
  assert len(names) == 51
  # Then automl's efficientnetv2_params keys (effnetv2_configs.py).
  names += [
      f"efficientnetv2-{size}" for size in ("b0", "b1", "b2", "b3", "s", "m",
                                            "l", "xl")
  ]
  assert sorted(specs.VARIANTS) == sorted(names)
  assert list(specs.VARIANTS)[:51] == names[:51]
  assert sorted(sum(specs.FAMILIES.values(), ())) == sorted(names)


@pytest.mark.parametrize("name, stem, head, blocks", [
    ("efficientnet-b0", 32, 1280, 16),
    ("efficientnet-b1", 32, 1280, 23),
    ("efficientnet-b3", 40, 1536, 26),
    ("efficientnet-b7", 64, 2560, 55),
    ("efficientnet-lite0", 32, 1280, 16),
    ("efficientnet-lite4", 32, 1280, 30),
])
def test_stem_head_and_block_counts(name, stem, head, blocks):
  spec = specs.get_variant(name)
  assert (spec.stem_filters, spec.head_filters, spec.num_blocks) == (stem, head,
                                                                     blocks)


def test_b7_stage_repeats_and_widths():
  scaled = specs.get_variant("efficientnet-b7").scaled_blocks()
  assert [b.repeats for b in scaled] == [4, 7, 7, 10, 10, 13, 4]
  assert [b.output_filters for b in scaled] == [32, 48, 80, 160, 224, 384, 640]


def test_lite_keeps_first_and_last_repeats_and_drops_se():
  scaled = specs.get_variant("efficientnet-lite4").scaled_blocks()
  assert [b.repeats for b in scaled] == [1, 4, 4, 6, 6, 8, 1]
  assert all(b.se_ratio == 0 for b in scaled)


def test_unknown_variant_lists_known_names():
  with pytest.raises(ValueError, match="efficientnet-b9") as error:
    specs.get_variant("efficientnet-b9")
  assert "efficientnet-b0" in str(error.value)
  assert "efficientnet-lite4" in str(error.value)


@pytest.mark.parametrize("field, value", [("width_coefficient", 0.0),
                                          ("depth_coefficient", -1.0),
                                          ("resolution", 0),
                                          ("dropout_rate", 1.0),
                                          ("survival_prob", 0.0),
                                          ("activation", "gelu"),
                                          ("input_normalization", "zscore")])
def test_model_spec_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(specs.get_variant("efficientnet-b0"), **{field: value})
