"""Any other timm CNN as `timm:<model name>`, partitioned per feature stage rather than per block.

No plugin file needed: the stage boundaries are timm's own `feature_info`, the modules are those timm's
`FeatureListNet` runs in order (the model's children, first-level Sequentials flattened). The stem runs
up to timm's first feature map; each later feature stage is one depth, so ResNet-50 gets 4 depths here
and 16 with its plugin. Models whose forward is not a chain of their children (most transformers) are
refused. No small-image stem either: use a plugin for 28–32 px inputs, or expect coarse maps.
"""
import torch
from torch import nn

from . import Partition, register_pattern


@register_pattern("timm:<timm model name>", r"timm:(.+)")
def timm_stages(num_classes: int, in_chans: int, image_size: int, *, name: str, **kw) -> Partition:
    import timm
    from timm.models import FeatureListNet

    model_name = name.removeprefix("timm:")
    if not timm.is_model(model_name):
        raise LookupError(f"{name}: timm has no such model (timm.list_models() lists them)")
    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
    chain = None
    for flatten in (False, True):  # ResNets name stages `layer1`; others `stages.0`, inside a Sequential
        try:
            chain = FeatureListNet(model, out_indices=tuple(range(len(model.feature_info))), flatten_sequential=flatten)
            break
        except (AssertionError, AttributeError, TypeError):
            pass
    if chain is None:
        raise ValueError(f"{name}: timm cannot list this model's feature stages; write a plugin (README)")
    groups, current = [], []
    for module_name, module in chain.items():  # the modules in forward order, cut after each feature map
        current.append(module)
        if module_name in chain.return_layers:
            groups.append(nn.Sequential(*current))
            current = []
    channels = chain.feature_info.channels()[1:]
    # the last feature map by timm's own forward: the chain must reproduce it, here and in the tests
    reference = lambda x: model.forward_intermediates(x, intermediates_only=True)[-1]
    x = torch.randn(1, in_chans, image_size, image_size)
    try:
        with torch.no_grad():
            same = torch.allclose(nn.Sequential(*groups).eval()(x), reference(x), atol=1e-4)
    except AssertionError:  # e.g. a ViT's patch embedding checks the input size
        raise ValueError(f"{name}: timm builds this model for one input size; write a plugin (README)") from None
    except RuntimeError:  # a conv or pool larger than its input
        stride = chain.feature_info.reduction()[-1]
        raise ValueError(f"{name}: {image_size}-px inputs are too small for its stride-{stride} stages; "
                         f"use at least {stride} px or a plugin with a small-image stem") from None
    finally:
        model.train()
    if not same:
        raise ValueError(f"{name}: this model's forward is not a chain of its modules; write a plugin (README)")
    return Partition(groups[0], groups[1:], channels, reference=reference)
