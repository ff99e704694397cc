"""Vision Transformer (Dosovitskiy et al. 2021) from timm, one depth per transformer block: ViT-Tiny has 12.

Not in the paper: here to show the protocol is general. Tokens are not a 2-D map, so the plugin gives
its own head (the protocol's optional `make_head`): timm's final LayerNorm, the class token, a linear
layer. Small images (≤ 64 px) use 4-px patches, e.g. 32 px → 64 tokens + the class token.
"""
import torch
from torch import nn

from . import Partition, register


class TokenStem(nn.Module):
    """Patch embedding, class token and position embedding: timm's ViT up to its first block."""

    def __init__(self, vit):
        super().__init__()
        self.patch_embed, self.pos_drop, self.patch_drop, self.norm_pre = (vit.patch_embed, vit.pos_drop,
                                                                           vit.patch_drop, vit.norm_pre)
        self.cls_token, self.reg_token, self.pos_embed = vit.cls_token, vit.reg_token, vit.pos_embed
        self.dynamic_img_size, self.no_embed_class = vit.dynamic_img_size, vit.no_embed_class
        self.embed = type(vit)._pos_embed  # timm's own token + position code, called on this module

    def forward(self, x):  # (B, C, H, W) → (B, 1 + H·W / patch², width)
        return self.norm_pre(self.patch_drop(self.embed(self, self.patch_embed(x))))


class ClassToken(nn.Module):
    def forward(self, x):  # (B, tokens, width) → (B, width)
        return x[:, 0]


def token_head(channels: int, num_classes: int) -> nn.Module:
    """timm's ViT head with global_pool='token': LayerNorm, the class token, linear."""
    return nn.Sequential(nn.LayerNorm(channels, eps=1e-6), ClassToken(), nn.Linear(channels, num_classes))


@register("vit_tiny_patch16_224", blocks=(12,))
def vit(num_classes: int, in_chans: int, image_size: int, *, name: str, **kw) -> Partition:
    import timm

    patch = 4 if image_size <= 64 else 16
    if image_size % patch:
        raise ValueError(f"{name} needs an image size divisible by its {patch}-px patches, got {image_size}")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              img_size=image_size, patch_size=patch, **kw)

    def reference(x):
        # timm's forward to the last block, before the final norm (each of our heads applies its own)
        spatial, prefix = model.forward_intermediates(x, indices=1, output_fmt="NLC", return_prefix_tokens=True,
                                                      intermediates_only=True)[0]
        return torch.cat([prefix, spatial], 1)

    return Partition(TokenStem(model), list(model.blocks), [model.embed_dim] * len(model.blocks),
                     make_head=token_head, reference=reference)
