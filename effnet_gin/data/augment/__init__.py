"""Augmentation stages of the training pipeline.

policies.py: AutoAugment and RandAugment on each cropped and resized image
(uint8); mixing.py: mixup, CutMix and random erasing on float32 batches;
recipes.py: the reference's per-variant RandAugment settings for .gin files.
"""
from effnet_gin.data.augment.mixing import cutmix
from effnet_gin.data.augment.mixing import mixup
from effnet_gin.data.augment.mixing import random_erasing
from effnet_gin.data.augment.policies import autoaugment
from effnet_gin.data.augment.policies import randaugment
from effnet_gin.data.augment.recipes import randaugment_magnitude_for
