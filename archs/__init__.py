"""Architecture plugins: one file per family, each registering builders by timm's names.

A builder takes (num_classes, in_chans, image_size, name=<registered name>, **kw) and returns a network that
satisfies odn.DepthPartitionable: `stem`, `blocks` (ordered), `channels` (after each block).
Every module in this folder is imported on first use, so adding a file is all a plugin needs. odn imports this
folder under a private name (odn_archs), so a plugin imports the registry relatively:
`from . import Partition, register`.
A family of names (wrn<d>_<k>, timm:<name>) registers one builder for a pattern instead.
`register(..., blocks=(...))` pins how many blocks each name yields: the conformance test checks it
and `--list-archs` shows it without building anything.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from typing import Callable, Sequence

BUILDERS: dict[str, Callable] = {}
BLOCKS: dict[str, int] = {}  # name → the block count its builder must yield (pinned at registration)
PATTERNS: dict[str, tuple[re.Pattern, Callable]] = {}  # shown form, e.g. "wrn<d>_<k>" → (regex, builder)
_discovered = False


def register(*names: str, blocks: Sequence[int] | None = None) -> Callable:
    """Register a builder under one or more names; a name may be registered once.

    `blocks`, one count per name, pins how many blocks each name yields (checked by the tests).
    """
    if blocks is not None and len(blocks) != len(names):
        raise ValueError(f"register{names}: {len(blocks)} block counts for {len(names)} names")

    def decorate(builder: Callable) -> Callable:
        for name in names:
            if name in BUILDERS:
                raise ValueError(f"architecture {name!r} is already registered")
            BUILDERS[name] = builder
        BLOCKS.update(zip(names, blocks or ()))
        return builder
    return decorate


def register_pattern(shown: str, regex: str) -> Callable:
    """Register a builder for every name that fully matches `regex`; errors list it as `shown`."""
    def decorate(builder: Callable) -> Callable:
        if shown in PATTERNS:
            raise ValueError(f"architecture pattern {shown!r} is already registered")
        PATTERNS[shown] = (re.compile(regex), builder)
        return builder
    return decorate


def _discover() -> None:
    # import lazily: plugins import timm, which costs seconds and is unneeded for `--help`
    global _discovered
    if not _discovered:
        _discovered = True
        for module in pkgutil.iter_modules(__path__):
            before, fix = sys.modules.get("archs"), (f"archs/{module.name}.py imports the registry by name; write "
                                                     "`from . import Partition, register` instead")
            try:
                importlib.import_module(f"{__name__}.{module.name}")
            except ModuleNotFoundError as error:
                raise ImportError(fix) if error.name == "archs" else error
            if sys.modules.get("archs") is not before:  # `from archs import register` filled a second registry
                raise ImportError(fix)


def names() -> list[str]:
    """Every registered architecture name, sorted."""
    _discover()
    return sorted(BUILDERS)


def family(name: str) -> str:
    """The plugin file a registered name comes from (e.g. "resnet"), without building it."""
    _discover()
    return BUILDERS[name].__module__.rsplit(".", 1)[-1]


def build(name: str, *, num_classes: int, in_chans: int, image_size: int, **kw):
    """Build the named architecture, partitioned into blocks."""
    _discover()
    builder = BUILDERS.get(name) or next((b for regex, b in PATTERNS.values() if regex.fullmatch(name)), None)
    if builder is None:
        raise LookupError(f"unknown architecture {name!r}; known: {', '.join(names() + sorted(PATTERNS))}")
    return builder(num_classes=num_classes, in_chans=in_chans, image_size=image_size, name=name, **kw)


class Partition:
    """What a builder returns: the stem, the ordered blocks and the channels after each block.

    A plain holder rather than an nn.Module, so odn owns the module tree it trains and saves.
    """

    def __init__(self, stem, blocks, channels, **extras):
        self.stem, self.blocks, self.channels = stem, list(blocks), list(channels)
        self.__dict__.update(extras)  # optional protocol members, e.g. make_head
