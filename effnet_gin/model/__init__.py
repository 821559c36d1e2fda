"""EfficientNet model: architecture specs, layers, the builder and FLOPs.

`build_model` is the gin-configurable entry point (bound as `build_model` or
`effnet_gin.model.build_model`); everything else is plain Python. Loading
weights into a built model is checkpoints/' job (`load_pretrained`).
"""
from effnet_gin.model.efficientnet import build_model
from effnet_gin.model.efficientnet import resolve_spec
from effnet_gin.model.efficientnet import variant_resize_method
from effnet_gin.model.efficientnet import variant_resolution
from effnet_gin.model.efficientnet import variant_train_resolution
from effnet_gin.model.flops import Cost
from effnet_gin.model.flops import count_flops
from effnet_gin.model.flops import count_params
from effnet_gin.model.flops import spec_cost
from effnet_gin.model.layers import BatchNorm
from effnet_gin.model.specs import B0_BLOCKS
from effnet_gin.model.specs import BlockSpec
from effnet_gin.model.specs import default_resolution
from effnet_gin.model.specs import default_train_resolution
from effnet_gin.model.specs import get_variant
from effnet_gin.model.specs import ModelSpec
from effnet_gin.model.specs import round_filters
from effnet_gin.model.specs import round_repeats
from effnet_gin.model.specs import VARIANTS
