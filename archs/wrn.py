"""Wide ResNets (Zagoruyko & Komodakis 2016) from timm's `ResNet` class, partitioned per residual block.

`wide_resnet50_2` / `wide_resnet101_2` are timm's ImageNet models (16 and 33 bottlenecks). The CIFAR
family WRN-d-k is built from the same class: BasicBlocks in three stages of (d − 4)/6 blocks, widths
16k / 32k / 64k, a 16-channel 3×3 stem. These are post-activation, WRN-shaped networks without
dropout, not a faithful copy of the paper's pre-activation blocks (README, "Architectures").
"""
import re

from torch import nn

from . import Partition, register, register_pattern
from .resnet import partition_resnet


@register("wide_resnet50_2", "wide_resnet101_2", blocks=(16, 33))
def wide_resnet(num_classes: int, in_chans: int, image_size: int, *, name: str, **kw) -> Partition:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              zero_init_last=False, **kw)
    return partition_resnet(model, in_chans, image_size)


@register("wrn16_8", "wrn28_10", "wrn40_2", "wrn40_4", blocks=(6, 12, 18, 18))
@register_pattern("wrn<d>_<k>", r"wrn(\d+)_(\d+)")
def wrn(num_classes: int, in_chans: int, image_size: int, *, name: str, **kw) -> Partition:
    from timm.models.resnet import BasicBlock, ResNet

    depth, k = map(int, re.fullmatch(r"wrn(\d+)_(\d+)", name).groups())
    if depth < 10 or (depth - 4) % 6 or k < 1:
        raise ValueError(f"{name}: WRN-d-k needs d = 6n + 4 with n ≥ 1 and k ≥ 1 (e.g. wrn16_8, wrn40_2)")
    n = (depth - 4) // 6
    # the 'deep' stem with stem_width 8 is the only way timm's ResNet starts its first stage at 16
    # channels; its three convs are then replaced by the WRN's single 3×3 conv
    model = ResNet(block=BasicBlock, layers=(n, n, n), channels=(16 * k, 32 * k, 64 * k), stem_type="deep",
                   stem_width=8, num_classes=num_classes, in_chans=in_chans, zero_init_last=False, **kw)
    model.conv1 = nn.Conv2d(in_chans, model.bn1.num_features, kernel_size=3, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return partition_resnet(model, in_chans, image_size)
