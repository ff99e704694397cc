"""ResNets (He et al. 2016) from timm, partitioned into residual blocks as in the paper (§III-A).

ResNet-18 → 8 basic blocks, ResNet-34 → 16, ResNet-50 → 16 bottlenecks; deeper timm ResNets
come for free. Small images (≤ 64 px) get the CIFAR-style stem the reference uses: a 3×3,
stride-1 conv and no max-pool, so a 28×28 digit is not shrunk to 7×7 before the first block.
"""
from torch import nn

from . import Partition, register


def small_image_stem(model, in_chans: int) -> None:
    """Swap timm's 7×7/2 conv + max-pool for a 3×3/1 conv (the reference's CIFAR stem)."""
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()


def partition_resnet(model, in_chans: int, image_size: int) -> Partition:
    """Split any timm `ResNet` into stem + one block per residual block."""
    if image_size <= 64:
        small_image_stem(model, in_chans)
    stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
    # feature_info[0] is the stem; the entries after it name each stage and its output channels
    stages = [(getattr(model, info["module"]), info["num_chs"]) for info in model.feature_info[1:]]
    blocks = [block for stage, _ in stages for block in stage]
    channels = [c for stage, c in stages for _ in stage]
    # timm's own forward, for the conformance test; stop_early also serves 3-stage (CIFAR WRN) models
    reference = lambda x: model.forward_intermediates(x, indices=[len(stages)], stop_early=True,
                                                      intermediates_only=True)[-1]
    return Partition(stem, blocks, channels, reference=reference)


@register("resnet18", "resnet26", "resnet34", "resnet50", "resnet101", "resnet152", blocks=(8, 8, 16, 16, 33, 50))
def resnet(num_classes: int, in_chans: int, image_size: int, *, name: str, **kw) -> Partition:
    import timm

    # zero_init_last=False: the reference initialises the last BN of each block like any other
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              zero_init_last=False, **kw)
    return partition_resnet(model, in_chans, image_size)
