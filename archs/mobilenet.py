"""MobileNets V1–V3 (Howard et al. 2017, Sandler et al. 2018, Howard et al. 2019) and EfficientNet-B0 from
timm, partitioned per inverted-residual (or depthwise-separable) block: 13 / 17 / 12 / 16 / 16 depths.

All five come from timm's EfficientNet builder: `conv_stem`, `bn1`, `blocks` (stages of blocks).
Where timm has a final 1×1 `conv_head` + norm before pooling (MobileNetV2, EfficientNet) it is folded
into the last block, so full depth is the stock network. MobileNetV3's `conv_head` acts on the pooled
vector and belongs to timm's head, so odn's heads replace it. Small images (≤ 64 px) get the stem and
the first stride-2 depthwise conv at stride 1: total stride 8, so a 32-px image ends at 4×4, not 1×1.
"""
from torch import nn

from . import Partition, register


def out_channels(block: nn.Module) -> int:
    # the last conv of a timm block (pointwise-linear, or the folded conv_head) sets its width
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


@register("mobilenetv1_100", "mobilenetv2_100", "mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0",
          blocks=(13, 17, 12, 16, 16))
def mobilenet(num_classes: int, in_chans: int, image_size: int, *, name: str, **kw) -> Partition:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
    blocks = [block for stage in model.blocks for block in stage]
    if image_size <= 64:
        model.conv_stem.stride = (1, 1)  # symmetric padding: k // 2 either way, so only the stride changes
        first_down = next(b for b in blocks if getattr(b, "conv_dw", None) is not None and b.conv_dw.stride == (2, 2))
        first_down.conv_dw.stride = (1, 1)
    if isinstance(getattr(model, "bn2", None), nn.Module) and isinstance(model.conv_head, nn.Conv2d):
        blocks[-1] = nn.Sequential(blocks[-1], model.conv_head, model.bn2)
    stem = nn.Sequential(model.conv_stem, model.bn1)
    return Partition(stem, blocks, [out_channels(b) for b in blocks], reference=model.forward_features)
