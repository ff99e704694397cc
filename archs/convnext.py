"""ConvNeXt (Liu et al. 2022) from timm, partitioned per ConvNeXt block: atto 12 blocks, nano 14.

Not in the paper: here to show the protocol is general. Each stage's downsample (LayerNorm + 2×2/2
conv) is glued to the stage's first block, so every depth ends on a complete block. Small images
(≤ 64 px) get a 3×3/1 stem conv in place of the 4×4/4 patchify (total stride 8 instead of 32), and
every head mirrors timm's: average pool → LayerNorm → linear.
"""
from torch import nn

from . import Partition, register


def norm_pooled_head(channels: int, num_classes: int) -> nn.Module:
    """timm's NormMlpClassifierHead without the MLP: pool, LayerNorm over channels, linear."""
    from timm.layers import LayerNorm2d

    return nn.Sequential(nn.AdaptiveAvgPool2d(1), LayerNorm2d(channels), nn.Flatten(), nn.Linear(channels, num_classes))


@register("convnext_atto", "convnext_nano", blocks=(12, 14))
def convnext(num_classes: int, in_chans: int, image_size: int, *, name: str, **kw) -> Partition:
    import timm

    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
    if image_size <= 64:
        width = model.stem[0].out_channels
        model.stem[0] = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1)
    blocks, channels = [], []
    for stage, info in zip(model.stages, model.feature_info):
        first = stage.blocks[0] if isinstance(stage.downsample, nn.Identity) else nn.Sequential(stage.downsample,
                                                                                              stage.blocks[0])
        blocks += [first, *stage.blocks[1:]]
        channels += [info["num_chs"]] * len(stage.blocks)
    return Partition(model.stem, blocks, channels, make_head=norm_pooled_head, reference=model.forward_features)
