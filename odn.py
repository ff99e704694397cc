"""odn: Optimally Deep Networks — train a CNN only as deep as the data set needs.

Progressive depth expansion (Optimally Deep Networks, §III): split a network into blocks, give
every depth its own head, warm up all depths at once, then train the shallowest depth until it
converges and add one block at a time until the target accuracy is met. The first depth that
meets it is fine-tuned and extracted as a standalone, much smaller network.

    python odn.py                                            # offline default: ResNet-18 on 8×8 digits
    python odn.py --arch resnet18 --data mnist --target 0.99                   # one-cycle schedules (fast)
    python odn.py --arch resnet18 --data mnist --target 0.99 --strategy paper  # the paper's exact protocol
    python odn.py ... --resume                               # continue a killed run from its last epoch
    torchrun --nproc-per-node 4 odn.py ...                   # the same search, DDP over 4 processes
    python odn.py plot RUN_DIR                               # redraw a run's search.png and depths.png

Reading order, as the paper goes: the protocol (`DepthPartitionable`), the multi-head model (`DepthNet`) and
`extract`; batches and one training epoch; the plateau rule (`plateau_step`); `warmup`; the strategies (how a
depth starts and when it stops); `search` — Algorithm 1: warm-up, then a loop that trains a depth, rejects it
below the target and adds a block, and `fine_tune`s the first depth that meets it; then measurement (Table I),
save / load, ONNX deployment, and last the command line and its report.

Used as a library, this file needs only torch: give `search` any `DepthPartitionable` network
and your own tensors in a `Data`; `extract` cuts out the network, `save` writes it and `load` reads
it back (with your own `build`). Under `torchrun` the same search runs with DDP, one rank per process.

Measured (2 CPU cores, AMD EPYC, 2026-11-26): the default `fast` strategy on all of MNIST, target 99 % → depth 2/8
(the paper's), 149,322 parameters (98.7 % fewer than full depth), test 99.42 % (the paper: 99.31 %), in 20
minutes, 0.080 × the training FLOPs of the paper's protocol (measured on a GPU: 259 epochs, test 99.21 %);
on all of Fashion-MNIST, ResNet-34, target 93.5 % → depth 3/16 (the paper: 6/16), 223,306 parameters,
validation 94.18 %, test 93.39 % (the paper: 93.54 %), in 52 minutes; `python odn.py` (digits) → depth 1/8,
test 98.89 %, 0.61 TFLOP in 4 s (the paper's protocol: depth 2/8, 98.61 %, 3.99 TFLOP in 18 s).
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------
# the protocol: what a network must offer to be searched (§III-A)


@runtime_checkable
class DepthPartitionable(Protocol):
    """A network cut into a stem and an ordered list of blocks.

    Depth d means stem + blocks[:d]; odn adds one head per depth and owns the slicing.
    `channels[i]` is the number of output channels of blocks[i] — what head i+1 needs.
    Optional: `make_head(channels, num_classes) -> nn.Module` replaces the default
    global-average-pool + linear head (e.g. token pooling for a ViT).
    """

    stem: nn.Module
    blocks: Sequence[nn.Module]
    channels: Sequence[int]


def pooled_linear_head(channels: int, num_classes: int) -> nn.Module:
    """The paper's head: global average pool → flatten → linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


# ----------------------------------------------------------------------------------------------
# the model with one head per depth (§III-A, Eq. 1)


class DepthNet(nn.Module):
    """Stem, blocks and one head per depth; `forward(x, d)` runs stem + blocks[:d] + head d."""

    def __init__(self, net: DepthPartitionable, num_classes: int):
        super().__init__()
        if not isinstance(net, DepthPartitionable):
            raise TypeError("the network must have `stem`, `blocks` and `channels` (DepthPartitionable)")
        if len(net.blocks) != len(net.channels):
            raise ValueError(f"{len(net.blocks)} blocks but {len(net.channels)} channel counts")
        make_head = getattr(net, "make_head", pooled_linear_head)
        self.stem = net.stem
        self.blocks = nn.ModuleList(net.blocks)
        self.heads = nn.ModuleList(make_head(c, num_classes) for c in net.channels)

    @property
    def max_depth(self) -> int:
        return len(self.blocks)

    def forward(self, x: Tensor, depth: int) -> Tensor:
        x = self.stem(x)
        for block in self.blocks[:depth]:
            x = block(x)
        return self.heads[depth - 1](x)

    def forward_all(self, x: Tensor, depth: int) -> list[Tensor]:
        """Logits of every depth 1..depth from one pass (the reference reran the stem per depth)."""
        x, logits = self.stem(x), []
        for block, head in zip(self.blocks[:depth], self.heads):
            x = block(x)
            logits.append(head(x))
        return logits

    def parts(self, depth: int) -> list[nn.Module]:
        return [self.stem, *self.blocks[:depth], self.heads[depth - 1]]

    def parameters_at(self, depth: int) -> list[nn.Parameter]:
        return [p for m in self.parts(depth) for p in m.parameters()]

    def state_at(self, depth: int) -> dict[str, Tensor]:
        """A detached copy of the weights of depth d, keyed as in `Extracted`."""
        return {k: v.detach().clone() for k, v in extract(self, depth).state_dict().items()}

    def load_state_at(self, depth: int, state: dict[str, Tensor]) -> None:
        """Put the weights of an extracted depth-d network back into this model."""
        keyed = {f"heads.{depth - 1}.{k[5:]}" if k.startswith("head.") else k: v for k, v in state.items()}
        missing = set(keyed) - set(self.state_dict())
        if missing:
            raise KeyError(f"weights do not fit depth {depth}: {sorted(missing)[:3]}")
        self.load_state_dict(keyed, strict=False)


class Extracted(nn.Module):
    """The deployable network: stem + first d blocks + head d (§III-D)."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.ModuleList(blocks), head

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def extract(net: DepthNet, depth: int) -> Extracted:
    """Copy stem + blocks[:depth] + head[depth] out of the multi-head model."""
    if not 1 <= depth <= net.max_depth:
        raise ValueError(f"depth must be in 1..{net.max_depth}, got {depth}")
    parts = copy.deepcopy(net.parts(depth))
    return Extracted(parts[0], parts[1:-1], parts[-1])


# ----------------------------------------------------------------------------------------------
# training primitives: in-memory batches, one epoch, accuracy, the plateau rule (§III-C)


@dataclass
class Data:
    """In-memory splits. uint8 images are scaled to [0, 1]; then every image is (x - mean) / std."""
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor] | None = None
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    device: torch.device | str | None = None  # where batches go when the images stay put (a memory-mapped cache)

    @property
    def training_device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else self.train[0].device


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    shape = (1, -1, 1, 1) if x.dim() == 4 else (-1,)
    return (x - x.new_tensor(mean).view(shape)) / x.new_tensor(std).view(shape)


def batches(x: Tensor, y: Tensor, batch_size: int, data: Data, generator: torch.Generator | None = None,
            memory_format: torch.memory_format = torch.contiguous_format, order: Tensor | None = None,
            first: int = 0):
    """Yield normalised (x, y) batches; shuffled when a generator is given (in `order`, from image `first`).

    Shuffled batches are global: in a torchrun job every rank draws the same order and takes its own
    share of each batch, so the ranks together train on exactly the batches one process would.
    """
    n, (rank, world) = len(x), rank_and_world()
    if generator is not None and order is None:
        order = torch.randperm(n, generator=generator).to(x.device)
    for start in range(first, n, batch_size):
        index = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        if generator is not None and len(index) < 2 * world:
            break  # batch-norm cannot train on a single image (per rank)
        if generator is not None and world > 1:
            index = index[rank::world]
        xb, yb = x[index], y[index]
        if data.device is not None:
            xb, yb = xb.to(data.device, non_blocking=True), yb.to(data.device, non_blocking=True)
        xb = normalise(xb, data.mean, data.std)
        if generator is not None and data.augment is not None:
            # one draw per global batch keeps every rank's stream in step, whatever its share's size
            seed = int(torch.randint(2**62, (1,), generator=generator)) + rank
            xb = data.augment(xb, torch.Generator().manual_seed(seed))
        yield (xb.contiguous(memory_format=memory_format) if xb.dim() == 4 else xb), yb


@torch.inference_mode()
def accuracy(model: Callable[[Tensor], Tensor], split: tuple[Tensor, Tensor], data: Data,
             batch_size: int = 1000) -> float | list[float]:
    """Exact fraction correct (the reference rounded to 0.1 pt during the search).

    A model that returns stacked logits of several heads (heads, batch, classes) gets one per head.
    """
    x, y = split
    rank, world = rank_and_world()
    part = slice(rank * len(y) // world, (rank + 1) * len(y) // world)  # each rank counts its share
    correct = 0
    for xb, yb in batches(x[part], y[part], batch_size, data):
        correct = correct + (model(xb).argmax(-1) == yb).sum(-1)
    correct = torch.as_tensor(correct, dtype=torch.float64, device=y.device)
    # counts, not averages of averages: every rank then takes the same accept / reject decision
    return (collective(correct) / len(y)).tolist()


# ----------------------------------------------------------------------------------------------
# several processes (torchrun): each rank trains on its share of every batch, with DDP over
# only the parts that train at the current depth; every decision comes from summed counts


def rank_and_world() -> tuple[int, int]:
    """(rank, number of processes) in a torchrun job; (0, 1) in a plain process."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def collective(values: Tensor, op=None) -> Tensor:
    """`values` reduced over the ranks (a sum unless `op`); unchanged in one process. NCCL reduces only
    GPU tensors and gloo CPU ones, so the values travel to the backend's device and back."""
    if rank_and_world()[1] == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = values.to(device, copy=True)
    dist.all_reduce(reduced, op or dist.ReduceOp.SUM)
    return reduced.to(values.device)


def from_rank_0(value):
    """Rank 0's `value` on every rank: a choice measured per process (speed, latency) must not diverge."""
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_agreement(phase: Phase) -> None:
    """Ranks must agree on every decision; assert it rather than hope for it (one collective per epoch)."""
    if rank_and_world()[1] > 1:
        mine = torch.tensor([phase.best_val, phase.epochs, phase.since_best], dtype=torch.float64)
        low, high = collective(mine, dist.ReduceOp.MIN), collective(mine, dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"ranks disagree at depth {phase.depth} ({phase.name}, epoch {phase.epochs}): "
                               f"best val / epochs / stale epochs range {low.tolist()}..{high.tolist()}")


class Active(nn.Module):
    """The parts that train at `depth` (stem, blocks[:depth], its head — or every head, warm-up).

    Wrapped in DistributedDataParallel, only these are all-reduced: idle deeper blocks take no part,
    so DDP needs no `find_unused_parameters`. Batch-norm statistics stay per rank (no SyncBatchNorm:
    one all-reduce per layer per step would cost more than the statistics of a share of 128 lose).
    """

    def __init__(self, net: DepthNet, depth: int, every_head: bool = False):
        super().__init__()
        self.stem, self.blocks, self.every_head = net.stem, nn.ModuleList(net.blocks[:depth]), every_head
        self.heads = nn.ModuleList(net.heads[:depth] if every_head else [net.heads[depth - 1]])

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x, logits = self.stem(x), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.every_head:
                logits.append(self.heads[i](x))
        return logits if self.every_head else self.heads[0](x)


def trainable(net: DepthNet, depth: int, every_head: bool = False) -> Callable[[Tensor], Tensor | list[Tensor]]:
    """The forward pass to train depth `depth` with: plain in one process, DDP over `Active` in several."""
    if rank_and_world()[1] == 1:
        return (lambda x: net.forward_all(x, depth)) if every_head else (lambda x: net(x, depth))
    from torch.nn.parallel import DistributedDataParallel
    device = next(net.parameters()).device
    return DistributedDataParallel(Active(net, depth, every_head), device_ids=[device] if device.type == "cuda" else None)


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware has it (CPUs, Ampere+ GPUs); fp16 (with loss scaling) on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class Interrupted(Exception):
    """The caller asked to stop (a signal): raised at a batch boundary, after a checkpoint was emitted."""


def train_epoch(loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: torch.optim.Optimizer,
                data: Data, s: Settings, generator: torch.Generator,
                on_batch: Callable[[int], bool | None] | None = None,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                position: dict | None = None) -> tuple[float, int]:
    """One pass over the training split; returns (mean loss, images seen). One host sync per epoch.

    A `scheduler`, when given, steps after every batch (the one-cycle schedule of `fast`). When
    `on_batch` returns True the epoch stops at that batch boundary and raises `Interrupted` with
    its `position` (order, next image, running loss), from which a later call continues it exactly.
    """
    device = data.training_device
    dtype = amp_dtype(device) if s.amp else torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    position = position or {"order": torch.randperm(len(data.train[1]), generator=generator),
                            "next": 0, "total": 0.0, "images": 0}
    rank, world = rank_and_world()
    # a resumed epoch's running totals are the whole job's: rank 0 carries them, the others start at 0
    total = torch.tensor(position["total"] if rank == 0 else 0.0, dtype=torch.float32, device=device)
    images = position["images"] if rank == 0 else 0
    order, first = position["order"].to(data.train[0].device), position["next"]
    for i, (xb, yb) in enumerate(batches(*data.train, s.batch_size, data, generator, memory_format, order, first)):
        with torch.autocast(device.type, dtype=dtype, enabled=s.amp):
            loss = loss_fn(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach().float() * len(yb)
        images += len(yb)
        stop = bool(on_batch and on_batch(len(yb)))
        if world > 1:  # a signal reaches the ranks at different batches: stop where the first one saw it
            stop = bool(collective(torch.tensor([float(stop)], device=device)) > 0)
        if stop:
            total, images = collective(torch.stack([total.double(), total.new_tensor(images, dtype=torch.float64)])).tolist()
            raise Interrupted({"order": order, "next": first + (i + 1) * s.batch_size, "total": total,
                               "images": int(images)})
    # the loss and the images of every rank: FLOPs and the logged loss cover the whole job
    total, images = collective(torch.stack([total.double(), total.new_tensor(images, dtype=torch.float64)])).tolist()
    return total / max(images, 1), int(images)


@dataclass
class Settings:
    """Every protocol number. The default strategy is `fast` (one-cycle schedules); `strategy="paper"` runs
    the paper's exact protocol with its numbers (warm-up 3 epochs at LR 0.001, LR 0.01, batch 128, LR × 0.6
    after every 5 epochs without a new best, converged after 23)."""
    target: float = 0.98
    strategy: str = "fast"
    warmup_epochs: int | None = None  # None: the strategy's own (paper, early, carry: 3; fast: 1)
    warmup_lr: float | None = None  # None: the strategy's own (paper, early, carry: 0.001; fast: 0.01)
    lr: float = 0.01
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    patience: int = 23
    lr_patience: int = 5
    lr_decay: float = 0.6
    start_depth: int = 1
    max_depth: int = 0  # 0 = every block
    tolerance: float = 0.0
    max_epochs: int = 0  # 0 = no cap; otherwise the most epochs of one search or fine-tune phase
    reject_margin: float = 0.005  # early/carry: reject a depth whose projected best stays this far below target
    # fast: every depth gets a short one-cycle look; a near miss gets a long one; a hit, a second cycle
    short_epochs: int = 3
    long_epochs: int = 8
    min_steps: int = 100  # a short look lasts at least this many steps; the long one keeps its ratio
    peak_lr: float = 0.2
    reach: float = 2.0  # within reach: short-look validation error ≤ reach × the target's error (1 − target)
    reach_slack: float = 1.3  # after a long look: short-look error × the measured gain ≤ this × the target's
    anneal_epochs: int = 4  # the chosen depth then trains on at a falling LR, up to long + this many passes
    baseline: bool = False  # also train the full depth from the same initial weights (Table I's full row)
    seed: int = 0
    amp: bool | None = False  # bf16 autocast (fp16 + loss scaling where bf16 is missing); None: time both
    channels_last: bool | None = False  # None: time both
    compile: bool = False
    # budgets (0 = none): a depth over any of them is never trained (§III-C's expansion stops below it)
    max_params: int = 0
    max_macs: int = 0  # forward multiply-adds per image
    max_latency_ms: float = 0.0  # batch-1 latency on the device at hand, measured once per depth

    def __post_init__(self) -> None:
        fast = self.strategy == "fast"
        self.warmup_epochs = (1 if fast else 3) if self.warmup_epochs is None else self.warmup_epochs
        self.warmup_lr = (0.01 if fast else 0.001) if self.warmup_lr is None else self.warmup_lr

    def check(self, blocks: int | None = None) -> None:
        """Raise ValueError naming the first option out of its range (depths only when `blocks` is given)."""
        if not 0 < self.target <= 1:
            raise ValueError(f"--target must be in (0, 1], got {self.target}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.start_depth < 1 or self.max_depth < 0 or 0 < self.max_depth < self.start_depth:
            raise ValueError(f"need 1 <= --start-depth ({self.start_depth}) <= --max-depth ({self.max_depth}, "
                             "0 = every block)")
        if blocks is not None and not self.start_depth <= (self.max_depth or blocks) <= blocks:
            raise ValueError(f"need 1 <= --start-depth <= --max-depth <= {blocks} (the network's blocks)")
        option = lambda name: f"--{name.replace('_', '-')} {getattr(self, name)}"
        for name in ("batch_size", "patience", "lr_patience", "short_epochs", "long_epochs", "min_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{option(name)} is out of range: must be ≥ 1")
        for name in ("warmup_epochs", "anneal_epochs", "max_epochs", "momentum", "weight_decay", "reject_margin",
                     "tolerance", "max_params", "max_macs", "max_latency_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{option(name)} is out of range: must be ≥ 0")
        for name in ("lr", "warmup_lr", "peak_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{option(name)} is out of range: must be > 0")
        if not 0 < self.lr_decay < 1:
            raise ValueError(f"{option('lr_decay')} is out of range: must be in (0, 1)")
        for name in ("reach", "reach_slack"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{option(name)} is out of range: must be ≥ 1")
        if self.tolerance >= self.target:
            raise ValueError(f"{option('tolerance')} must be below --target {self.target}")
        if self.short_epochs > self.long_epochs:
            raise ValueError(f"{option('short_epochs')} must be ≤ --long-epochs {self.long_epochs}")


@dataclass
class Phase:
    """One phase of the run and what it cost; serialisable, so a run can be recorded and resumed."""
    name: str  # warmup | search | finetune | anneal | baseline
    depth: int
    lr: float
    epochs: int = 0
    images: int = 0
    flops: float = 0.0  # training FLOPs: 3 × forward multiply-adds × images
    seconds: float = 0.0
    best_val: float = -1.0
    since_best: int = 0
    converged: bool = False
    val_curve: list[float] = field(default_factory=list)  # validation accuracy after each epoch
    budget: int = 0  # epochs of a scheduled phase (fast); 0 = until the stopping rule says so


def plateau_step(phase: Phase, val_acc: float, s: Settings) -> tuple[bool, bool]:
    """§III-C stopping rule after one epoch: returns (new best, decay the LR now).

    A new best resets the counter; every 5th epoch without one multiplies the LR by 0.6 (the
    paper says "reduced by 60 %"; its code multiplies by 0.6, and so do we). Converged at 23.
    """
    improved = val_acc > phase.best_val
    phase.val_curve.append(val_acc)
    phase.best_val, phase.since_best = (val_acc, 0) if improved else (phase.best_val, phase.since_best + 1)
    decay = not improved and phase.since_best % s.lr_patience == 0
    phase.converged = phase.since_best >= s.patience or 0 < s.max_epochs <= phase.epochs
    return improved, decay


# ----------------------------------------------------------------------------------------------
# the search: warm-up, progressive depth expansion, fine-tuning (Algorithm 1)


@dataclass
class Result:
    depth: int  # the optimal depth, or the best depth tried when the target was not reached
    target_reached: bool
    val_accuracy: float
    phases: list[Phase]
    weights: dict[int | str, dict[str, Tensor]]  # best weights per depth trained (+ "baseline"), `Extracted` keys
    warmup_weights: dict[str, Tensor]
    macs: list[int]  # forward multiply-adds per image at depth 1..N
    baseline: Phase | None = None  # the full depth trained alone, when asked for; not part of the cost
    speed: dict | None = None  # the measured choice of autocast and memory format, when asked for
    budget: dict | None = None  # per-depth params / MACs / latency and the deepest depth within the budgets

    @property
    def cost(self) -> dict[str, float]:
        return {k: sum(getattr(p, k) for p in self.phases) for k in ("epochs", "images", "flops", "seconds")}


def sgd(params, lr: float, s: Settings) -> torch.optim.SGD:
    nesterov = s.strategy == "fast" and s.momentum > 0  # the fast recipe; the paper's SGD is plain momentum
    return torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=nesterov)


def warmup(net: DepthNet, phase: Phase, data: Data, s: Settings, macs: list[int], generator: torch.Generator,
           emit: Callable[[dict], object], resume: dict | None = None) -> dict[str, Tensor]:
    """§III-B: a few epochs at every depth at once — summed loss over all heads, one step per batch.

    Returns the warm-up weights, from which every expansion starts.
    """
    depth = phase.depth
    modules = [net.stem, *net.blocks[:depth], *net.heads[:depth]]
    optimizer = sgd([p for m in modules for p in m.parameters()], s.warmup_lr, s)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(s.warmup_epochs, 1))
    forward = trainable(net, depth, every_head=True)
    loss_fn = lambda x, y: sum(F.cross_entropy(logits, y) for logits in forward(x))
    position = restore(resume, net, phase, optimizer, schedule, generator)[1] if resume else None
    while phase.epochs < s.warmup_epochs:
        start = time.perf_counter()
        net.train()
        loss, images = train_epoch_or_checkpoint(loss_fn, optimizer, data, s, generator, emit, None, position,
                                                 lambda: snapshot(net, phase, optimizer, schedule, generator, None))
        position = None
        lr = optimizer.param_groups[0]["lr"]
        schedule.step()
        net.eval()
        val = accuracy(lambda x: torch.stack(net.forward_all(x, depth)), data.val, data)  # every head, one pass
        # one pass through every block feeds every head: the cost of one full-depth forward
        account(phase, images, macs[depth - 1], time.perf_counter() - start)
        check_finite(loss, phase)
        phase.best_val = max(phase.best_val, max(val))
        check_agreement(phase)
        emit({"event": "epoch", "phase": "warmup", "depth": depth, "epoch": phase.epochs, "loss": loss,
              "lr": lr, "val_acc": max(val), "val_by_depth": val, "seconds": phase.seconds / phase.epochs,
              "budget": s.warmup_epochs})
        emit({"event": "checkpoint", **snapshot(net, phase, optimizer, schedule, generator, None)})
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def train_epoch_or_checkpoint(loss_fn, optimizer, data: Data, s: Settings, generator: torch.Generator,
                              emit: Callable[[dict], object], scheduler, position: dict | None,
                              state: Callable[[], dict]) -> tuple[float, int]:
    """`train_epoch`; when a signal stops it mid-epoch, emit a checkpoint of that very batch first."""
    try:
        return train_epoch(loss_fn, optimizer, data, s, generator,
                           lambda n: emit({"event": "batch", "images": n}), scheduler, position)
    except Interrupted as stopped:
        emit({"event": "checkpoint", **state(), "position": stopped.args[0]})
        raise


def check_finite(loss: float, phase: Phase) -> None:
    """A NaN or infinite loss ends the run: nothing after it could be trusted (one check per epoch)."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"the training loss became {loss} at depth {phase.depth} ({phase.name}, epoch "
                                 f"{phase.epochs}): lower the learning rate (--lr, --peak-lr or --warmup-lr)")


def snapshot(net: DepthNet, phase: Phase, optimizer: torch.optim.Optimizer, scheduler, generator: torch.Generator,
             best: dict[str, Tensor] | None) -> dict:
    """Everything a phase needs to go on exactly as if never stopped (a `checkpoint` event's body)."""
    return {"phase": asdict(phase), "net": net.state_dict(), "best": best, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "generator": generator.get_state(), "rng": torch.get_rng_state(), "position": None}


def restore(state: dict, net: DepthNet, phase: Phase, optimizer: torch.optim.Optimizer, scheduler,
            generator: torch.Generator) -> tuple[dict[str, Tensor] | None, dict | None]:
    """Put a `snapshot` back; returns the phase's best weights and where in its epoch it stopped."""
    for key, value in state["phase"].items():
        setattr(phase, key, value)
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    return state["best"], state["position"]


def account(phase: Phase, images: int, macs: int, seconds: float) -> None:
    phase.epochs += 1
    phase.images += images
    phase.flops += 3.0 * macs * images  # forward + backward ≈ 3 forward passes
    phase.seconds += seconds


def train_phase(net: DepthNet, phase: Phase, data: Data, optimizer: torch.optim.Optimizer, s: Settings,
                macs: int, generator: torch.Generator, emit: Callable[[dict], None],
                stop: Callable[[Phase, Settings], bool] | None = None,
                schedule: Callable[[int, int], float] | None = None, resume: dict | None = None) -> dict[str, Tensor]:
    """Train at one depth until `stop` (default: the plateau rule's convergence); returns the best weights.

    Without a `schedule` the plateau rule decays the LR (§III-C); with one, the LR follows
    `schedule(step, steps)` × the phase's LR over the phase's fixed budget of epochs. After every
    epoch a `checkpoint` event carries its whole state; `resume` (such a state) continues from it.
    """
    d, stop = phase.depth, stop or converged
    best = net.state_at(d)
    forward = trainable(net, d)
    loss_fn = lambda x, y: F.cross_entropy(forward(x), y)
    scheduler = None
    if schedule:
        per_epoch = steps_per_epoch(len(data.train[1]), s.batch_size, rank_and_world()[1])
        phase.budget = phase.budget or schedule_epochs(phase, s, per_epoch)
        steps = phase.budget * per_epoch
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, steps))
    position = None
    if resume is not None:
        best, position = restore(resume, net, phase, optimizer, scheduler, generator)
    while not stop(phase, s):
        start = time.perf_counter()
        net.train()
        loss, images = train_epoch_or_checkpoint(loss_fn, optimizer, data, s, generator, emit, scheduler, position,
                                                 lambda: snapshot(net, phase, optimizer, scheduler, generator, best))
        position = None
        net.eval()
        val = accuracy(lambda x: net(x, d), data.val, data)
        account(phase, images, macs, time.perf_counter() - start)
        check_finite(loss, phase)
        improved, decay = plateau_step(phase, val, s)
        check_agreement(phase)
        if improved:
            best = net.state_at(d)
        lr = optimizer.param_groups[0]["lr"]
        if decay and not schedule:
            for group in optimizer.param_groups:
                group["lr"] *= s.lr_decay
        emit({"event": "epoch", "phase": phase.name, "depth": d, "epoch": phase.epochs, "loss": loss, "lr": lr,
              "val_acc": val, "best_val": phase.best_val, "since_best": phase.since_best, "budget": phase.budget,
              "seconds": phase.seconds / phase.epochs})
        emit({"event": "checkpoint", **snapshot(net, phase, optimizer, scheduler, generator, best)})
    net.load_state_at(d, best)
    return best


def steps_per_epoch(images: int, batch_size: int, world: int = 1) -> int:
    return images // batch_size + (images % batch_size >= 2 * world)  # `batches` drops a last batch of one a rank


# a strategy is two plain functions and at most one more: `start` prepares the network for a depth
# and returns the LR to begin with; `stop` says after each epoch whether the phase is over; an
# optional per-step LR `schedule` (then a depth within reach also gets the long look)


def restart_from_warmup(net: DepthNet, depth: int, first: bool, warm: dict[str, Tensor], s: Settings) -> float:
    """The paper's expansion (§III-C): reload the warm-up weights; deeper depths start at half the LR.

    The reference halves the LR it was *given*, not the decayed one, so every expansion starts at
    lr/2 (halving the current LR would start depth 3 near 2e-6 and learn nothing).
    """
    net.load_state_dict(warm)
    return s.lr if first else s.lr / 2


def keep_converged(net: DepthNet, depth: int, first: bool, warm: dict[str, Tensor], s: Settings) -> float:
    """Keep what the shallower depth learned; only the new block and its head come from warm-up.

    The reference throws the converged depth away; the net still holds its best weights here.
    """
    if first:
        return restart_from_warmup(net, depth, first, warm, s)
    fresh = (f"blocks.{depth - 1}.", f"heads.{depth - 1}.")
    net.load_state_dict({k: v for k, v in warm.items() if k.startswith(fresh)}, strict=False)
    return s.lr / 2


def restart_at_peak(net: DepthNet, depth: int, first: bool, warm: dict[str, Tensor], s: Settings) -> float:
    """`fast`: every depth starts from the warm-up weights, as in the paper, at the one-cycle peak LR."""
    net.load_state_dict(warm)
    return s.peak_lr


def converged(phase: Phase, s: Settings) -> bool:
    """The paper's rule: every phase runs until 23 epochs bring no new best."""
    return phase.converged


def projected(phase: Phase, s: Settings) -> float:
    """How high a depth's best accuracy could still climb, judged from its own curve.

    Learning curves flatten, so the rate the best-so-far accuracy rose at over the last `patience`
    epochs, kept up for as long again as the depth has trained, is a generous ceiling. The slope
    spans a whole patience window because validation curves are noisy: over a shorter one, a dip
    after a jump made depths that went on to meet the target look hopeless. Curves are judged only
    after two patience windows: early on they climb steeply and noisily.
    """
    epochs = len(phase.val_curve)
    if epochs <= 2 * s.patience:
        return 1.0  # too early to judge
    gain = phase.best_val - max(phase.val_curve[:-s.patience])
    return phase.best_val + gain / s.patience * epochs


def decided(phase: Phase, s: Settings) -> bool:
    """Stop a depth as soon as the outcome is known, not when its curve is flat.

    Accept the moment a depth meets the target: the paper's rule would accept that same depth.
    Reject it once even a generous projection of its curve stays `reject_margin` below the
    target; a depth stalling just short of it trains on to convergence, as in the paper. Only
    decisions come sooner: fine-tuning continues the accepted phase to the paper's convergence,
    so `early` hands back the very network the paper's search phase converges to.
    """
    if phase.converged or phase.name != "search":
        return phase.converged
    goal = s.target - s.tolerance
    return phase.best_val >= goal or projected(phase, s) < goal - s.reject_margin


def schedule_epochs(phase: Phase, s: Settings, steps_per_epoch: int) -> int:
    """`fast`: a search phase is a short look; a near miss's fine-tune (and the full-depth baseline) a long one
    (a hit's fine-tune makes up the difference: long − short).

    On small data an epoch is a few steps, too few to converge in (8×8 digits, 10 steps an epoch:
    depth 1 read 91 % after 3 epochs, 99 % after 8), so a short look lasts at least `min_steps`
    and the long look stretches by the same factor.

    The anneal tops the fine-tune up to `long_epochs + anneal_epochs` passes over the data, no more:
    at full scale 8 one-cycle epochs end while validation still rises (Fashion-MNIST, depth 3: +0.43 pt
    in the last one), but on small data the stretch has already given the long look 19–35 passes, and
    more passes only fit the training images (a 1,000-image set annealed 18 more: test −0.70 pt).
    """
    short = max(s.short_epochs, math.ceil(s.min_steps / steps_per_epoch))
    long = math.ceil(short * s.long_epochs / s.short_epochs)
    if phase.name == "anneal":
        return max(0, s.long_epochs + s.anneal_epochs - long)
    return short if phase.name == "search" else long


def end_of_schedule(phase: Phase, s: Settings) -> bool:
    """`fast` judges a depth only at the end of its schedule: mid-schedule accuracy is no verdict
    (measured on MNIST: depth 2 read 80–98 % until the LR came down in its last two epochs)."""
    return phase.epochs >= phase.budget


def cosine(step: int, steps: int) -> float:
    """LR factor falling from 1 to zero as a cosine over `steps`: the anneal's whole schedule, and
    one-cycle's after its warm-up (the anneal starts from trained weights, so it needs none)."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))


def one_cycle(step: int, steps: int, warmup: float = 0.25) -> float:
    """LR factor at `step` of `steps`: linear up over the first quarter, then cosine down to zero
    (super-convergence, Smith & Topin 2018): a depth converges in a few epochs instead of ~50."""
    up = max(1, round(warmup * steps))
    if step < up:
        return (step + 1) / up
    return cosine(step - up, steps - up)


def anneal_phase(depth: int, best_val: float, s: Settings, steps_per_epoch: int, name: str = "anneal") -> Phase:
    """`fast`'s last step for a depth (the answer, the full-depth baseline, each of `bench.py grid`'s depths):
    a tenth of the peak LR for the rest of `long_epochs + anneal_epochs` passes (budget 0: nothing to do).
    It starts from `best_val`, so its weights are kept only if validation improves."""
    return Phase(name, depth, s.peak_lr / 10, best_val=best_val,
                 budget=schedule_epochs(Phase("anneal", depth, 0), s, steps_per_epoch))


def anneal(net: DepthNet, phase: Phase, best: dict[str, Tensor], data: Data, s: Settings, macs: int,
           emit: Callable[[dict], object], resume: dict | None = None) -> dict[str, Tensor]:
    """Train an `anneal_phase` on from the depth's best weights `best`, the LR a cosine to zero (no
    warm-up: the weights are trained already); returns the best weights, `best` if none beat it."""
    d = phase.depth
    net.load_state_at(d, best)  # a resumed run skipped the phase that left them in the net
    return train_phase(net, phase, data, sgd(net.parameters_at(d), phase.lr, s), s, macs,
                       shuffler(s, Phase("anneal", d, 0)), emit, end_of_schedule, cosine, resume)


def within_reach(phase: Phase, s: Settings, gain: float | None = None) -> bool:
    """`fast`: worth the long schedule — the long look is predicted to meet the target.

    A short schedule understates a depth: on MNIST, depth 2 read 98.93 % after 3 epochs and
    99.33 % after 8; judged on the short look alone, a 99 % search would pick depth 3. Before any
    long look, a depth is within reach when its short-look error is at most `reach` × the target's.
    After one, `gain` is what the long schedule did to the error on this data (long ÷ short, the
    smallest seen): the next depth is within reach when its short-look error times that gain stays
    within `reach_slack` × the target's error. The slack is there because deeper depths gain more
    (MNIST: 0.80 at depth 1, 0.63 at depth 2). Without the measured gain, every depth of a hard set
    is a near miss (Fashion-MNIST at 93.5 %: any depth above 87 %), and each would get a long look.
    """
    error, goal_error = 1 - phase.best_val, 1 - (s.target - s.tolerance)
    if error > s.reach * goal_error:
        return False
    return gain is None or error * gain <= s.reach_slack * goal_error


# the options only some strategies read (the CLI refuses the others' options rather than ignore them)
PLATEAU_OPTIONS = ("lr", "patience", "lr_patience", "lr_decay", "max_epochs", "reject_margin")
SCHEDULE_OPTIONS = ("short_epochs", "long_epochs", "min_steps", "peak_lr", "reach", "reach_slack", "anneal_epochs")

STRATEGIES: dict[str, tuple[Callable[..., float], Callable[[Phase, Settings], bool],
                            Callable[[int, int], float] | None]] = {
    "paper": (restart_from_warmup, converged, None),
    "early": (restart_from_warmup, decided, None),
    "carry": (keep_converged, decided, None),
    "fast": (restart_at_peak, end_of_schedule, one_cycle),
}


def shuffler(s: Settings, phase: Phase) -> torch.Generator:
    """Each phase shuffles from its own seed, so a depth sees the same batches however long earlier
    depths ran: `early` then replays `paper`'s epochs exactly and only stops them sooner."""
    return torch.Generator().manual_seed(zlib.crc32(f"{s.seed}/{phase.name}/{phase.depth}".encode()))


def search(net: DepthNet, data: Data, s: Settings, on_event: Callable[[dict], object] | None = None,
           resume: dict | None = None) -> Result:
    """Find the shallowest depth of `net` whose validation accuracy reaches `s.target` (Algorithm 1).

    Warms up every depth, trains depth by depth until the target is met, fine-tunes that depth and
    leaves its best-validation weights in `net`. Events (one per batch, per epoch, per finished
    phase, and a `checkpoint` after every epoch) go to `on_event`; the function itself prints and
    writes nothing. `resume`, a checkpoint event, continues that run exactly where it stopped.
    """
    s.check(net.max_depth)
    start, stop, schedule = STRATEGIES[s.strategy]
    torch.manual_seed(s.seed)
    goal = s.target - s.tolerance
    net.to(data.training_device).eval()  # eval: batch-norm cannot count a batch of one in training mode
    sample = normalise(data.train[0][:1].to(data.training_device), data.mean, data.std)
    macs = [forward_macs(lambda x, d=d: net(x, d), sample) for d in range(1, net.max_depth + 1)]
    phases, weights, journal = [], {}, []  # journal: (record, weights) of every finished phase, in order
    report = on_event or (lambda record: None)
    speed = resume["speed"] if resume else None
    # a latency budget is measured on this device; a resumed run keeps the measurement it started with
    budget = resume["budget"] if resume else from_rank_0(within_budget(net, s, macs, sample))
    last = min(s.max_depth or net.max_depth, budget["depth"] if budget else net.max_depth)

    def emit(record: dict):
        if record["event"] == "checkpoint":
            record = {**record, "journal": journal, "index": len(journal), "settings": asdict(s), "speed": speed,
                      "budget": budget}
        return report(record)

    if resume:  # the speed settings the run started with: a new choice would change its numbers
        s = dataclasses.replace(s, amp=resume["settings"]["amp"], channels_last=resume["settings"]["channels_last"])
    elif s.amp is None or s.channels_last is None:  # measured on the device at hand, never assumed
        amp, channels_last, timings = from_rank_0(choose_speed(net, data, s, s.start_depth))
        s = dataclasses.replace(s, amp=amp, channels_last=channels_last)
        speed = {"amp": amp, "channels_last": channels_last, "seconds_per_image": timings}
        emit({"event": "speed", **speed})
    per_epoch = steps_per_epoch(len(data.train[1]), s.batch_size, rank_and_world()[1])
    if schedule:  # the most epochs each depth can still take, so a caller can show the worst case ahead
        emit({"event": "plan", "macs": macs, "start": s.start_depth, "last": last, "goal": goal,
              "warmup_epochs": s.warmup_epochs,
              "short": schedule_epochs(Phase("search", 1, 0), s, per_epoch),
              "long": schedule_epochs(Phase("finetune", 1, 0), s, per_epoch),
              "anneal": schedule_epochs(Phase("anneal", 1, 0), s, per_epoch)})
    if s.channels_last:
        net.to(memory_format=torch.channels_last)
    if s.compile:
        for module in (net.stem, *net.blocks, *net.heads):
            module.compile()  # per module, so no recompilation for each depth

    def run(phase: Phase, train: Callable[[dict | None], dict[str, Tensor]]) -> dict[str, Tensor]:
        """Train one phase — or, resuming, skip it (finished before) or continue it (the checkpoint's)."""
        i = len(journal)
        if resume and i < resume["index"]:
            record, state = resume["journal"][i]
            for key, value in record.items():
                setattr(phase, key, value)
        else:
            state = train(resume if resume and i == resume["index"] else None)
            emit({"event": "phase", **asdict(phase), "weights": state})
        journal.append((asdict(phase), state))
        if phase.name != "baseline":
            phases.append(phase)
        return state

    def train(phase: Phase, optimizer: torch.optim.Optimizer, generator: torch.Generator, **rule) -> dict:
        return run(phase, lambda live: train_phase(net, phase, data, optimizer, s, macs[phase.depth - 1], generator,
                                                   emit, resume=live, **rule))

    baseline = None
    if s.baseline:  # Table I's full-depth row: the full network trained alone, same recipe, same start
        initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
        baseline = Phase("baseline", net.max_depth, s.peak_lr if schedule else s.lr)
        optimizer = sgd(net.parameters_at(net.max_depth), baseline.lr, s)
        weights["baseline"] = train(baseline, optimizer, shuffler(s, baseline),
                                    stop=stop if schedule else None, schedule=schedule)
        # fast: the answer's recipe ends in the anneal, so the full row gets it too; else the full row is
        # trained for fewer passes than the depth it is compared with
        topup = anneal_phase(net.max_depth, baseline.best_val, s, per_epoch, name="baseline")
        if schedule and topup.budget:
            weights["baseline"] = run(topup, lambda live: anneal(net, topup, weights["baseline"], data, s, macs[-1],
                                                                 emit, live))
            baseline = dataclasses.replace(
                baseline, best_val=topup.best_val, val_curve=baseline.val_curve + topup.val_curve,
                **{k: getattr(baseline, k) + getattr(topup, k) for k in ("epochs", "images", "flops", "seconds", "budget")})
        net.load_state_dict(initial)

    # §III-B: warm up all depths, keep the weights for every expansion
    phase = Phase("warmup", last, s.warmup_lr)
    warm = run(phase, lambda live: warmup(net, phase, data, s, macs, shuffler(s, phase), emit, live))

    def fine_tune(d: int, searched: Phase, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                  continuing: bool) -> Phase:
        """§III-D: train depth d on until it converges; returns the fine-tune phase."""
        if schedule and searched.best_val >= goal:
            # fast, a short look that already met the target: nothing is left to decide, so its weights
            # go on through one more one-cycle (a warm restart) until the depth has made a long look's
            # passes, instead of a long look started over; kept only if validation improves. Measured on
            # all of MNIST: 99.27 % validation, 18 % less compute than the long look's 99.38 %; trained on
            # at a tenth of the peak LR instead, 99.22 %
            long = schedule_epochs(Phase("finetune", d, 0), s, per_epoch)
            if long == searched.budget:
                return searched  # it has had a long look's passes already
            phase = Phase("finetune", d, s.peak_lr, best_val=searched.best_val, budget=long - searched.budget)
            net.load_state_at(d, weights[d])  # a resumed run skipped the phase that left them in the net
            optimizer, generator = sgd(net.parameters_at(d), phase.lr, s), shuffler(s, phase)
        elif schedule:  # fast, a near miss: the long schedule, from the warm-up weights like the short look
            lr = start(net, d, False, warm, s)
            phase = Phase("finetune", d, lr)
            optimizer, generator = sgd(net.parameters_at(d), lr, s), shuffler(s, phase)
        else:
            # same optimizer. A phase stopped before it converged (early, carry) is *continued* —
            # same batches, optimizer and plateau counters — so the depth ends trained exactly as
            # the paper's search phase trains it.
            phase = Phase("finetune", d, optimizer.param_groups[0]["lr"], best_val=searched.best_val,
                          since_best=searched.since_best if continuing else 0)
            generator = generator if continuing else shuffler(s, phase)
        weights[d] = train(phase, optimizer, generator, stop=stop, schedule=schedule)
        return phase

    # §III-C: train the shallowest depth until it stops; below target → one more block
    reached, tuned, gain = False, {}, None
    for d in range(s.start_depth, last + 1):
        lr = start(net, d, d == s.start_depth, warm, s)
        optimizer = sgd(net.parameters_at(d), lr, s)
        phase = Phase("search", d, lr)
        generator = shuffler(s, phase)
        weights[d] = train(phase, optimizer, generator, stop=stop, schedule=schedule)
        reached = phase.best_val >= goal
        # fast judges a near miss only after the long schedule, which is then also its fine-tune; a hit
        # is fine-tuned from where its short look ended
        if reached or (schedule and within_reach(phase, s, gain)):
            tuned[d] = fine_tune(d, phase, optimizer, generator, continuing=not phase.converged)
            if not reached:  # a near miss's long look: what the long schedule did to the error, measured
                gain = min(gain or math.inf, (1 - tuned[d].best_val) / (1 - phase.best_val))
                reached = tuned[d].best_val >= goal
        if reached:
            break  # §III-D: the first depth that meets the target, already fine-tuned
        # below the target: depth d is rejected, and the next pass adds block d + 1

    # target not reached: fine-tune the best depth tried
    if not reached:
        best = max((p for p in phases if p.name in ("search", "finetune")), key=lambda p: p.best_val)
        d, continuing = best.depth, best is phases[-1] and not best.converged
        if best is not phases[-1]:
            net.load_state_at(d, weights[d])
            optimizer = sgd(net.parameters_at(d), optimizer.param_groups[0]["lr"], s)
        if d not in tuned:
            tuned[d] = fine_tune(d, best, optimizer, generator, continuing)
    # fast: a long look that ended while validation still rose (full-scale data, `schedule_epochs`)
    # goes on from its best weights at a tenth of the peak LR, falling to zero; the new weights are
    # kept only if validation improves
    phase = anneal_phase(d, tuned[d].best_val, s, per_epoch)
    if schedule and phase.budget:
        weights[d] = run(phase, lambda live: anneal(net, phase, weights[d], data, s, macs[d - 1], emit, live))
        tuned[d] = phase
    net.load_state_at(d, weights[d])  # a resumed run skipped the phase that left them in the net
    return Result(d, reached, tuned[d].best_val, phases, weights, warm, macs, baseline, speed, budget)


def within_budget(net: DepthNet, s: Settings, macs: list[int], sample: Tensor) -> dict | None:
    """The deepest depth whose parameters, multiply-adds and batch-1 latency all fit the budgets."""
    if not (s.max_params or s.max_macs or s.max_latency_ms):
        return None
    facts = {"params": depth_params(net), "macs": macs,
             "latency_ms": [latency_ms(extract(net, d), sample) if s.max_latency_ms else None
                            for d in range(1, net.max_depth + 1)]}
    fits = [(not s.max_params or p <= s.max_params) and (not s.max_macs or m <= s.max_macs) and
            (not s.max_latency_ms or t <= s.max_latency_ms)
            for p, m, t in zip(facts["params"], macs, facts["latency_ms"])]
    if not fits[s.start_depth - 1]:
        raise ValueError(f"depth {s.start_depth} is already over the budget ({facts['params'][s.start_depth - 1]:,} "
                         f"params, {macs[s.start_depth - 1]:,} multiply-adds"
                         + (f", {facts['latency_ms'][s.start_depth - 1]:.2f} ms" if s.max_latency_ms else "")
                         + "); raise --max-params / --max-macs / --max-latency-ms")
    depth = s.start_depth
    while depth < net.max_depth and fits[depth]:
        depth += 1
    return {**facts, "depth": depth}


def choose_speed(net: DepthNet, data: Data, s: Settings, depth: int,
                 seconds_per_image: Callable[[bool, bool], float] | None = None,
                 rounds: int = 3) -> tuple[bool, bool, dict]:
    """Time a few training steps with and without bf16 autocast and channels-last; keep the fastest.

    Measured on this project's CPUs, bf16 is 2× faster on one with AVX-512 bf16 and 10× slower on
    an AVX2-only one; channels-last flips likewise. Options already set (not None) are kept. Each
    setting keeps its best of `rounds` timings, taken in turn: one timing of a near tie once chose
    channels-last off on a 1 % difference, and all of MNIST then trained 20 % slower (timing adds noise,
    never speed). A setting 1.5× slower than the best after a round is not timed again.
    """
    amps = [False, True] if s.amp is None else [s.amp]
    formats = [False, True] if s.channels_last is None and data.train[0].dim() == 4 else [bool(s.channels_last)]
    time_one = seconds_per_image or (lambda a, c: time_training_steps(net, data, s, depth, a, c))
    timings = {(a, c): [] for a in amps for c in formats}
    for _ in range(rounds if len(timings) > 1 else 1):
        best = min((min(seen) for seen in timings.values() if seen), default=math.inf)
        for setting, seen in timings.items():
            if not seen or min(seen) <= 1.5 * best:
                seen.append(time_one(*setting))
    amp, channels_last = min(timings, key=lambda setting: min(timings[setting]))
    return amp, channels_last, {f"amp={a} channels_last={c}": min(seen) for (a, c), seen in timings.items()}


def time_training_steps(net: DepthNet, data: Data, s: Settings, depth: int, amp: bool, channels_last: bool,
                        steps: int = 3) -> float:
    """Seconds per image of `steps` training steps at `depth` on a copy (the net is left untouched).

    Steps of the training batch size, since kernels are chosen per shape: timed at 32 images a step, the
    card's command chose channels-last off and trained 11 % slower (2,415 s against 2,159 s)."""
    model = extract(net, depth).train()
    images = s.batch_size
    x, y = data.train
    probe = lambda n: Data((x[:n], y[:n]), data.val, mean=data.mean, std=data.std, device=data.device)
    trial = dataclasses.replace(s, amp=amp, channels_last=channels_last, batch_size=images)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = lambda a, b: F.cross_entropy(model(a), b)
    generator = torch.Generator().manual_seed(0)
    train_epoch(loss_fn, optimizer, probe(images), trial, generator)  # first step: allocation, kernel choice
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    _, seen = train_epoch(loss_fn, optimizer, probe(images * steps), trial, generator)
    sync()
    return (time.perf_counter() - start) / max(seen, 1)


# ----------------------------------------------------------------------------------------------
# measurement: parameters, size, multiply-adds, latency (Table I)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def depth_params(net: DepthNet) -> list[int]:
    """Parameters of the extracted network at every depth 1..N (stem + blocks + that depth's head), uncopied."""
    return [count_params(nn.ModuleList(net.parts(d))) for d in range(1, net.max_depth + 1)]


def size_mb(params: int) -> float:
    """fp32 size in MB (2^20 bytes)."""
    return params * 4 / 2**20


def forward_macs(model: Callable[[Tensor], Tensor], sample: Tensor) -> int:
    """Multiply-adds of one forward pass of one image, counted by torch.utils.flop_counter.

    The paper's figures come from fvcore, which counts one multiply-add as one FLOP; torch counts
    two, so we halve. Convolutions and linear layers only: normalisation and pooling are omitted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(sample)
    return counter.get_total_flops() // 2


@torch.inference_mode()
def latency_ms(model: nn.Module, sample: Tensor, repeats: int = 20) -> float:
    """Median wall time of one batch-1 forward pass, in milliseconds."""
    x = sample.float()
    return 1000 * median_seconds(lambda: model.eval()(x), repeats)


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:  # first calls allocate and choose kernels
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def report_rows(net: DepthNet, result: Result, data: Data) -> list[dict]:
    """Table I: one row per depth trained, then the full depth (trained alone with --baseline)."""
    full_params = count_params(extract(net, net.max_depth))
    sample = normalise(data.train[0][:1].to(data.training_device), data.mean, data.std)
    depths = sorted(k for k in result.weights if isinstance(k, int))
    rows = [(d, d, [p for p in result.phases if p.depth == d and p.name != "warmup"]) for d in depths]
    if result.baseline is not None:
        rows.append(("baseline", net.max_depth, [result.baseline]))
    elif net.max_depth not in depths:
        rows.append(("full", net.max_depth, []))
    table = []
    for key, d, phases in rows:
        model = extract(net, d)
        if phases:
            model.load_state_dict(result.weights[key])
        params = count_params(model.eval())
        table.append({
            "depth": d, "max_depth": net.max_depth, "kind": key if isinstance(key, str) else "search",
            "params": params, "size_mb": size_mb(params), "size_reduction": 1 - params / full_params,
            "macs": result.macs[d - 1], "latency_ms": latency_ms(model, sample),
            "val_accuracy": max(p.best_val for p in phases) if phases else None,
            "test_accuracy": accuracy(model, data.test, data) if phases and data.test is not None else None,
            "epochs": sum(p.epochs for p in phases), "train_flops": sum(p.flops for p in phases),
            "chosen": key == result.depth})
    return table


# ----------------------------------------------------------------------------------------------
# save and load: safetensors weights + a JSON record, written atomically


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary name, fsync, then rename: a crash or a full disk never leaves half a
    file, and the previous version stays intact until the new one is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write(str(temporary))
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_weights(path: Path, state: dict[str, Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage: clone each tensor on the CPU
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    from safetensors import SafetensorError

    try:
        atomic_write(path, lambda name: save_file(tensors, name, metadata=text))
    except SafetensorError as error:  # its I/O errors (a full disk) are OSErrors to every caller
        message = str(error).replace("\n", " ")  # "… I/O error: File too large (os error 27)"
        code = message.rpartition("(os error ")[2].rstrip(")")
        raise OSError(int(code) if code.isdigit() else None, message) from None


def save_json(path: Path, record: dict) -> None:
    atomic_write(path, lambda name: Path(name).write_text(json.dumps(record, indent=2) + "\n"))


def pack(value, key: str, tensors: dict[str, Tensor]):
    """Nested dicts/lists with tensors → JSON-able structure; the tensors go to `tensors` by key."""
    if isinstance(value, Tensor):
        tensors[key] = value
        return {"tensor": key}
    if isinstance(value, dict):  # keys keep their type (an optimizer's state is keyed by int)
        return {"dict": [[k, pack(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [pack(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    return {"value": value}


def unpack(packed, tensors: dict[str, Tensor]):
    kind, body = next(iter(packed.items()))
    if kind == "tensor":
        return tensors[body]
    if kind == "dict":
        return {k: unpack(v, tensors) for k, v in body}
    if kind == "list":
        return [unpack(v, tensors) for v in body]
    return body


def save_checkpoint(path: Path, state: dict, facts: dict) -> None:
    """One file, safetensors + JSON metadata, replaced atomically: never read back with pickle."""
    tensors: dict[str, Tensor] = {}
    body = pack({k: v for k, v in state.items() if k != "event"}, "c", tensors)
    save_weights(path, tensors, {"checkpoint": body, "facts": facts})


def read_checkpoint(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """(checkpoint, facts) from `save_checkpoint`; ValueError naming the file when it is damaged."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as file:
            meta = file.metadata() or {}
            body, facts = json.loads(meta["checkpoint"]), json.loads(meta["facts"])
            loaded = {k: file.get_tensor(k) for k in file.keys()} if tensors else {}
        return (unpack(body, loaded) if tensors else body), facts
    except (OSError, KeyError, ValueError, SafetensorError) as error:
        raise ValueError(f"{path} is damaged ({error}); start over with --force") from None


def save(model: Extracted, out_dir: str | Path, *, arch: str, depth: int, num_classes: int, in_chans: int,
         image_size: int, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), **record) -> Path:
    """Write what `load` reads back: odn.safetensors (the extracted weights) and odn.json.

    `arch` is the name `load` hands its `build` to make the network again; `mean`/`std` are the
    input normalisation; any further keyword (accuracy, data set, ...) is kept in odn.json too.
    Both files are replaced atomically. Returns the folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"arch": arch, "depth": depth, "num_classes": num_classes, "in_chans": in_chans,
              "image_size": image_size, "mean": list(mean), "std": list(std), **record}
    header = {k: record[k] for k in ("arch", "data", "depth", "max_depth", "num_classes", "in_chans", "image_size",
                                     "mean", "std", "test_accuracy") if k in record}
    save_weights(out_dir / "odn.safetensors", model.state_dict(), header)
    save_json(out_dir / "odn.json", record)
    return out_dir


def load(out_dir: str | Path, build: Callable[..., DepthPartitionable] | None = None) -> Extracted:
    """Rebuild the extracted network saved in `out_dir` (odn.json + odn.safetensors), in eval mode.

    `build(name, num_classes=, in_chans=, image_size=)` makes the architecture; by default the
    registry in archs/ does.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not (out_dir / "odn.json").exists() and (out_dir / CHECKPOINT).exists():
        raise ValueError(f"cannot load a network from {out_dir}: it holds an unfinished run (no odn.json yet); "
                         "finish it with --resume first")
    for name, read in (("odn.json", lambda f: json.loads(f.read_text())), ("odn.safetensors", lambda f: load_file(str(f)))):
        try:
            loaded = read(out_dir / name)
        except (OSError, ValueError, SafetensorError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"cannot load a network from {out_dir}: {name}: {reason}") from None
        record, state = (loaded, None) if name == "odn.json" else (record, loaded)
    try:
        if build is None:
            import archs
            build = archs.build
        net = DepthNet(build(record["arch"], num_classes=record["num_classes"], in_chans=record["in_chans"],
                             image_size=record["image_size"]), record["num_classes"])
        model = extract(net, record["depth"])
    except KeyError as error:
        raise ValueError(f"cannot load a network from {out_dir}: odn.json lacks {error}") from None
    except (LookupError, TypeError, ValueError) as error:
        raise ValueError(f"cannot load a network from {out_dir}: odn.json: {str(error).strip(chr(34) + chr(39))}") \
            from None
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        problem = (f"missing tensors {missing[:3]}" if missing else f"unexpected tensors {extra[:3]}" if extra else
                   f"{wrong[0]} has shape {tuple(state[wrong[0]].shape)}, the network needs "
                   f"{tuple(expected[wrong[0]].shape)}")
        raise ValueError(f"cannot load a network from {out_dir}: odn.safetensors does not fit the network in "
                         f"odn.json ({problem})")
    model.load_state_dict(state)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# deploy: ONNX with checked parity, latency in torch and onnxruntime (optional extra: odn[deploy])


DEPLOY_MISSING = "ONNX export skipped: it needs the deploy extra — pip install 'odn[deploy]' (onnx, onnxscript, onnxruntime)"


def deploy_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))


def export_onnx(model: nn.Module, sample: Tensor, path: Path) -> None:
    """Write `model` as ONNX (opset 18, torch's exporter) with a dynamic batch axis: input `image`."""
    import contextlib
    import io

    model = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
        program = torch.onnx.export(model, (sample.float().contiguous(),), input_names=["image"],
                                    output_names=["logits"], dynamic_shapes={"x": {0: batch}}, dynamo=True,
                                    opset_version=18, verbose=False)
    atomic_write(path, lambda name: program.save(name))


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()  # compare like with like
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def onnx_parity(path: Path, model: nn.Module, split: tuple[Tensor, Tensor], data: Data) -> dict:
    """Run the whole split through onnxruntime and PyTorch: the largest logit difference and how
    often the two agree on the class — checked, never assumed."""
    session, model = onnx_session(path), model.float().eval()
    largest, agree = 0.0, 0
    for xb, _ in batches(*split, 1000, data):
        expected = model(xb).float().cpu()
        got = torch.from_numpy(session.run(None, {"image": xb.float().contiguous().cpu().numpy()})[0])
        largest = max(largest, (got - expected).abs().max().item())
        agree += (got.argmax(-1) == expected.argmax(-1)).sum().item()
    return {"max_abs_logit_diff": largest, "argmax_agreement": agree / len(split[1])}


@torch.inference_mode()
def speeds(model: nn.Module, onnx_path: Path | None, sample: Tensor) -> dict:
    """Median batch-1 latency (ms) and batch-128 throughput (img/s), PyTorch eager and onnxruntime."""
    one, many = sample[:1].float(), sample[:1].float().expand(128, *sample.shape[1:]).contiguous()
    runs = {"torch": lambda x: model(x)}
    if onnx_path is not None:
        session = onnx_session(onnx_path)
        runs["onnxruntime"] = lambda x: session.run(None, {"image": x.cpu().numpy()})
    model.float().eval()
    result = {"threads": torch.get_num_threads()}
    for name, run in runs.items():
        result[f"{name}_ms_batch1"] = 1000 * median_seconds(lambda: run(one), repeats=50)
        result[f"{name}_img_s_batch128"] = 128 / median_seconds(lambda: run(many), repeats=5)
    return result


def quantize_int8(onnx_path: Path, out_path: Path, data: Data, images: int = 512) -> dict:
    """onnxruntime static int8 quantisation (QDQ, per-channel weights), calibrated on training images;
    returns its size, its test accuracy and its speed."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = normalise(data.train[0][torch.randperm(len(data.train[1]), generator=torch.Generator().manual_seed(0))[:images]],
                  data.mean, data.std).float().cpu()

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": xb.contiguous().numpy()} for xb in x.split(32)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        atomic_write(out_path, lambda name: quantize_static(
            str(prepared), name, Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8))
    session = onnx_session(out_path)
    test = data.test if data.test is not None else data.val
    correct = sum((torch.from_numpy(session.run(None, {"image": xb.float().cpu().numpy()})[0]).argmax(-1) == yb.cpu())
                  .sum().item() for xb, yb in batches(test[0].cpu(), test[1].cpu(), 1000, data))
    one = x[:1].numpy()
    many = x[:1].expand(128, *x.shape[1:]).contiguous().numpy()
    return {"file": out_path.name, "size_mb": out_path.stat().st_size / 2**20, "test_accuracy": correct / len(test[1]),
            "onnxruntime_ms_batch1": 1000 * median_seconds(lambda: session.run(None, {"image": one}), 50),
            "onnxruntime_img_s_batch128": 128 / median_seconds(lambda: session.run(None, {"image": many}), 5)}


def deploy(model: nn.Module, full: nn.Module, out_dir: Path, data: Data, int8: bool = False) -> dict:
    """Export the optimal network to ONNX, check it against PyTorch on the test split, time both networks."""
    sample = normalise(data.train[0][:1], data.mean, data.std).cpu()
    model, full = copy.deepcopy(model).cpu().float(), copy.deepcopy(full).cpu().float()
    export_onnx(model, sample, out_dir / "model.onnx")
    test = data.test if data.test is not None else data.val
    parity = onnx_parity(out_dir / "model.onnx", model, (test[0].cpu(), test[1].cpu()), data)
    if parity["argmax_agreement"] < 0.999 or parity["max_abs_logit_diff"] > 1e-3:
        raise ValueError(f"{out_dir / 'model.onnx'} disagrees with PyTorch (max |Δlogit| "
                         f"{parity['max_abs_logit_diff']:.2e}, same class on {parity['argmax_agreement']:.2%} of "
                         "the test split): do not deploy it; please report this with the run folder")
    with tempfile.TemporaryDirectory() as folder:  # the full network, to measure what the cut buys
        export_onnx(full, sample, Path(folder) / "full.onnx")
        optimal, whole = speeds(model, out_dir / "model.onnx", sample), speeds(full, Path(folder) / "full.onnx", sample)
    speedup = {k: (whole[k] / optimal[k] if k.endswith("ms_batch1") else optimal[k] / whole[k])
               for k in optimal if k != "threads"}
    return {"onnx": "model.onnx", "input": {"name": "image", "shape": ["batch", *sample.shape[1:]],
                                            "mean": list(data.mean), "std": list(data.std)},
            "size_mb": (out_dir / "model.onnx").stat().st_size / 2**20,
            "parity": parity, "optimal": optimal, "full": whole, "speedup": speedup,
            "int8": quantize_int8(out_dir / "model.onnx", out_dir / "model.int8.onnx", data) if int8 else None}


# ----------------------------------------------------------------------------------------------
# command line: parse, validate, call the core, report with rich, write files


HELP = {
    "arch": "architecture, a name registered in archs/ (--list-archs lists them)",
    "data": "data set: digits (offline default), mnist, fashion_mnist, emnist, svhn, cifar10, cifar100, stl10, "
            "or folder:<path> (PATH/train/<class>/<image>, optional val/ and test/; or PATH/<class>/<image>)",
    "target": "target validation accuracy in (0, 1]",
    "strategy": "fast (one-cycle schedules: a short look at every depth, a long one for depths within reach), "
                "paper (the paper's exact protocol), early (paper, but stop a depth once its outcome is known) "
                "or carry (early, and keep the converged weights when a block is added)",
    "warmup_epochs": "epochs of all-depth warm-up (§III-B; fast 1, the others 3)",
    "warmup_lr": "warm-up learning rate, cosine-annealed (fast 0.01, the others 0.001)",
    "lr": "paper/early/carry: search learning rate; each expansion starts at half of it",
    "batch_size": "training batch size",
    "patience": "paper/early/carry: epochs without a new best validation accuracy that mean converged",
    "lr_patience": "paper/early/carry: multiply the LR by --lr-decay after every this many epochs without a new best",
    "lr_decay": "paper/early/carry: LR factor of the plateau rule",
    "start_depth": "first depth to train",
    "max_depth": "deepest depth to try (0 = all blocks)",
    "tolerance": "accept a depth whose best validation accuracy is ≥ target − tolerance",
    "max_epochs": "paper/early/carry: cap on the epochs of any one search or fine-tune phase (0 = none), for quick runs",
    "train_subset": "train on a seeded random subset of this many images (0 = all)",
    "seed": "random seed for weights and shuffling",
    "device": "auto, cpu or cuda",
    "data_dir": "data root (default: $ODN_DATA, else ./data)",
    "image_size": "resize every image to this many pixels square (0 = native size)",
    "augment": "random crop (+ flip where a mirror keeps the class) per training batch "
               "(default: on for the colour sets, off for grey ones and folders, as in the paper)",
    "cache": "decode the data set once into odn-cache/ beside it and memory-map it from then on (sets larger "
             "than memory; every torchrun rank shares it); delete that folder to rebuild",
    "out": "output folder (default: runs/<arch>-<data>)",
    "val_subset": "validate on the first this many validation images (0 = all), for quick runs",
    "reject_margin": "early/carry: reject a depth once a generous projection of its curve stays this far below "
                     "the target",
    "baseline": "also train the full depth alone with the same recipe, fast's anneal included (Table I's full row, cost ratio)",
    "short_epochs": "fast: epochs of the one-cycle schedule every depth gets (the short look)",
    "long_epochs": "fast: epochs of the one-cycle schedule of a near miss (its fine-tune); a depth whose short "
                   "look meets the target trains on from it, one more cycle, until it has made as many passes",
    "min_steps": "fast: a short look lasts at least this many steps (more epochs on small data sets); the long "
                 "one stretches by the same factor",
    "peak_lr": "fast: peak learning rate of the one-cycle schedule (SGD with Nesterov momentum)",
    "reach_slack": "fast: after a long look, a depth is within reach when its short-look error times the "
                   "measured long-look gain is at most this many times the target's error",
    "anneal_epochs": "fast: the chosen depth then trains on from its best weights at --peak-lr / 10 falling "
                     "to 0, until it has made --long-epochs + this many passes over the "
                     "data (none on small data, where --min-steps already stretched the long look); kept only "
                     "if validation improves (0 = none)",
    "reach": "fast: a depth whose short-look validation error is at most this many times the target's "
             "error (1 − target) gets the long schedule before it is judged",
    "amp": "bf16 autocast (fp16 with loss scaling on GPUs without bf16); default: time a few steps both ways "
           "and keep the faster",
    "channels_last": "channels-last memory format; default: time a few steps both ways and keep the faster",
    "compile": "torch.compile each block",
    "max_params": "budget: never train a depth with more parameters than this (0 = no budget)",
    "max_macs": "budget: never train a depth with more forward multiply-adds per image than this (0 = none)",
    "max_latency_ms": "budget: never train a depth slower than this at batch 1 on this device, measured once per "
                      "depth (0 = none)",
    "export": "export the finished run in this folder to ONNX (parity and latency checked), then exit",
    "int8": "also write model.int8.onnx: onnxruntime static int8 quantisation calibrated on 512 training images",
    "strict_images": "folders: stop at an unreadable image instead of skipping it with a warning",
    "resume": "continue the interrupted run in --out from its last checkpoint (same options)",
    "force": "start over in an --out that already holds a run (finished or interrupted)",
    "keep_checkpoints": "keep checkpoint.safetensors once the run has finished",
    "list_archs": "list every registered architecture name, its block count and plugin file, then exit",
    "describe": "build this architecture and print the params, MB and multiply-adds of every depth, then exit: "
                "for --data's images and classes when given, else 3 channels, 10 classes, --image-size or 32 px",
}


def cli(
    arch: str = "resnet18", data: str = "digits", target: float = 0.98, strategy: str = "fast",
    warmup_epochs: int | None = None, warmup_lr: float | None = None, lr: float = 0.01, batch_size: int = 128,
    patience: int = 23, lr_patience: int = 5, lr_decay: float = 0.6, start_depth: int = 1,
    max_depth: int = 0, tolerance: float = 0.0, max_epochs: int = 0, train_subset: int = 0,
    seed: int = 0, device: str = "auto", data_dir: str = "", out: str = "",
    image_size: int = 0, augment: bool | None = None,
    val_subset: int = 0, reject_margin: float = 0.005, short_epochs: int = 3, long_epochs: int = 8,
    min_steps: int = 100,
    peak_lr: float = 0.2, reach: float = 2.0, reach_slack: float = 1.3, anneal_epochs: int = 4,
    baseline: bool = False,
    amp: bool | None = None,
    channels_last: bool | None = None, compile: bool = False, resume: bool = False, force: bool = False,
    keep_checkpoints: bool = False, strict_images: bool = False, cache: bool = False, max_params: int = 0, max_macs: int = 0,
    max_latency_ms: float = 0.0, export: str = "", int8: bool = False, list_archs: bool = False, describe: str = "",
) -> None:
    """Find the optimal depth of ARCH for DATA, fine-tune it, extract it and report Table I."""
    from rich.console import Console

    import archs
    import data as datasets

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 110))  # keep Table I readable in logs and pipes
    if list_archs:
        return console.print(architecture_list(archs))
    if describe:
        try:
            # sized for --data when one is named: channels, classes and image size change every count
            shape = (3, 10, image_size or 32)
            if data != "digits":
                dataset = datasets.load(data, data_dir or None, image_size=image_size)
                shape = (dataset.in_chans, dataset.num_classes, dataset.image_size)
            net = DepthNet(archs.build(describe, num_classes=shape[1], in_chans=shape[0], image_size=shape[2]),
                           shape[1])
        except (LookupError, ValueError, datasets.DataUnavailable) as error:
            fail(str(error).strip("'\""))
        return console.print(depth_table(describe, net, *shape))
    if export:
        return export_run(Path(export), data_dir, console, int8)
    # every option named like a Settings field is that field: the CLI adds nothing of its own
    settings = Settings(**{k: v for k, v in locals().items() if k in Settings.__dataclass_fields__})
    for name in ("train_subset", "val_subset", "image_size"):
        if locals()[name] < 0:
            fail(f"--{name.replace('_', '-')} {locals()[name]} is out of range: must be ≥ 0 (0 = all)")
    try:
        settings.check()  # every option's range, before any data is loaded
    except ValueError as error:
        fail(str(error))
    # an option the chosen strategy never reads would be silently ignored: say so instead
    scheduled = strategy in STRATEGIES and STRATEGIES[strategy][2] is not None
    for name in PLATEAU_OPTIONS if scheduled else SCHEDULE_OPTIONS:
        if getattr(settings, name) != Settings.__dataclass_fields__[name].default:
            fail(f"--{name.replace('_', '-')} does nothing with --strategy {strategy}: it is an option of "
                 + ("the paper, early and carry strategies (fast uses --peak-lr, --short-epochs and --long-epochs)"
                    if scheduled else "--strategy fast") + "; drop it or change --strategy")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        fail(f"--device {device} is not available here; use --device cpu")
    rank = int(os.environ.get("RANK", 0))
    if rank:
        console.quiet = True  # torchrun: rank 0 alone prints and writes
    # folder:/a/b/shapes → runs/<arch>-folder-shapes
    name = f"folder-{Path(data[len('folder:'):]).resolve().name}" if data.startswith("folder:") else data
    out_dir = Path(out or f"runs/{arch}-{name}")
    command = {"arch": arch, "data": data, "train_subset": train_subset, "val_subset": val_subset,
               "image_size": image_size, "augment": augment, "device": device, **asdict(settings)}
    checkpoint = check_out_dir(out_dir, resume, force, command)  # on every rank: all fail alike, before joining
    try:
        dataset = datasets.load(data, data_dir or None, image_size=image_size, strict_images=strict_images,
                                cache=cache)
        torch.manual_seed(seed)
        partition = archs.build(arch, num_classes=dataset.num_classes, in_chans=dataset.in_chans,
                                image_size=dataset.image_size)
        net = DepthNet(partition, dataset.num_classes)
        settings.check(net.max_depth)
    except (LookupError, ValueError, datasets.DataUnavailable) as error:
        fail(str(error).strip("'\""))
    for option, wanted, split in (("train-subset", train_subset, dataset.train), ("val-subset", val_subset, dataset.val)):
        if wanted > len(split[1]):
            fail(f"--{option} {wanted} is larger than the split ({len(split[1]):,} images); use at most that, or 0")
    if dataset.skipped:
        shown = ", ".join(dataset.skipped[:3]) + (", …" if len(dataset.skipped) > 3 else "")
        console.print(f"[yellow]warning[/]: skipped {len(dataset.skipped)} unreadable image(s): {shown} "
                      "(--strict-images stops instead)", soft_wrap=True)
    train = dataset.train
    if train_subset:
        keep = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(seed))[:train_subset]
        train = (train[0][keep], train[1][keep])
    val = (dataset.val[0][:val_subset], dataset.val[1][:val_subset]) if val_subset else dataset.val
    device = join_torchrun_job(device)
    # a memory-mapped cache stays mapped; its batches travel to the device one at a time
    to = lambda split: split if cache else (split[0].to(device), split[1].to(device))
    augment = dataset.augment_by_default if augment is None else augment
    run_data = Data(to(train), to(val), to(dataset.test), dataset.mean, dataset.std,
                    dataset.augment if augment else None, device if cache else None)
    facts = {"arch": arch, "data": data, "num_classes": dataset.num_classes, "in_chans": dataset.in_chans,
             "image_size": dataset.image_size, "mean": list(dataset.mean), "std": list(dataset.std),
             "classes": dataset.classes, "augment": augment}
    console.print(f"[bold]odn[/] {arch} on {data}: {len(train[1]):,} train / {len(val[1]):,} val / "
                  f"{len(dataset.test[1]):,} test images, {net.max_depth} blocks, target {target:.2%}, "
                  f"strategy {strategy}, device {device} → {out_dir}", soft_wrap=True)
    import shlex
    import signal
    import sys

    signals: list[int] = []

    def on_signal(number, frame):
        if signals:  # a second Ctrl-C: stop at once; the last epoch's checkpoint is on disk
            raise KeyboardInterrupt
        signals.append(number)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    world = int(os.environ.get("WORLD_SIZE", 1))
    launcher = f"torchrun --nproc-per-node {world} odn.py " if world > 1 else "python odn.py "
    resume_command = launcher + shlex.join([*(a for a in sys.argv[1:] if a not in ("--resume", "--force")), "--resume"])
    try:
        state = read_checkpoint(checkpoint)[0] if checkpoint else None
        result = run_with_progress(net, run_data, settings, out_dir, {**facts, "command": command}, console, state,
                                   lambda: bool(signals))
    except (Interrupted, KeyboardInterrupt):
        console.print(f"[yellow]interrupted[/]: checkpoint and finished phases are in {out_dir}; "
                      f"continue with: {resume_command}", soft_wrap=True)
        raise SystemExit(143 if signals == [signal.SIGTERM] else 130)
    except FloatingPointError as error:
        fail(f"{error}; finished phases are kept in {out_dir}", code=1)
    except ValueError as error:
        fail(str(error))
    except RuntimeError as error:
        if world == 1:
            raise
        # another rank died (its own error is above) or the ranks disagreed: say what is safe, not a traceback
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        fail(f"rank {rank} of the torchrun job stopped: {reason}; the last checkpoint and every finished phase are "
             f"in {out_dir}: fix the first error reported, then {resume_command}", code=1)
    except OSError as error:
        then = f"then {resume_command}" if (out_dir / CHECKPOINT).exists() else "then run the same command again"
        fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space or raise the disk quota",
               errno.EFBIG: "raise the file-size limit (ulimit -f)"}.get(error.errno, f"make {out_dir} writable")
        fail(f"cannot write in {out_dir} ({error.strerror or error}); the last complete checkpoint and every "
             f"finished file there are intact: {fix}, {then}", code=1)
    rows = report_rows(net, result, run_data)  # every rank: test accuracy is counted across them
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank:
        return
    record = run_record(result, rows, settings, facts, net.max_depth, len(train[1]))
    record["by_depth"] = {"macs": result.macs, "params": depth_params(net)}
    # a GPU run's seconds are the GPU's: "cpu" alone would name the wrong machine beside them
    record["device"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    model = extract(net, result.depth)
    save(model, out_dir, **record)
    if not keep_checkpoints:
        (out_dir / CHECKPOINT).unlink(missing_ok=True)
    console.print(report_table(rows, record))
    deploy_and_report(model, extract(net, net.max_depth), out_dir, run_data, record, console, int8)
    draw(out_dir, console)
    verdict = "reached" if result.target_reached else "[red]NOT reached[/] — best depth tried"
    if result.budget and not result.target_reached and result.budget["depth"] < net.max_depth:
        verdict = f"[red]not met within the budget[/] (depths ≤ {result.budget['depth']} fit it) — best depth within it"
    console.print(f"target {target:.2%} {verdict}: depth {result.depth}/{net.max_depth}, "
                  f"test {record['test_accuracy']:.2%}; search cost {record['search_cost']['flops'] / 1e12:.2f} "
                  f"TFLOP, {record['search_cost']['seconds']:.0f} s. The network: {out_dir}/odn.safetensors "
                  "(odn.load reads it back)", soft_wrap=True)
    written = ", ".join(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
    console.print(f"wrote in {out_dir}: {written}", highlight=False, soft_wrap=True)


def deploy_and_report(model: nn.Module, full: nn.Module, out_dir: Path, data: Data, record: dict, console,
                      int8: bool = False) -> None:
    """model.onnx beside the weights, its parity and both networks' speed in odn.json and on screen."""
    if not deploy_available():
        console.print(DEPLOY_MISSING, style="yellow", markup=False, soft_wrap=True)
        return
    try:
        record["deploy"] = deploy(model, full, out_dir, data, int8)
    except ValueError as error:
        fail(str(error), code=1)
    save_json(out_dir / "odn.json", record)
    d, parity = record["deploy"], record["deploy"]["parity"]
    console.print(f"ONNX: {out_dir / 'model.onnx'} — max |Δlogit| vs PyTorch {parity['max_abs_logit_diff']:.1e}, "
                  f"same class on {parity['argmax_agreement']:.2%} of the test split", soft_wrap=True, highlight=False)
    for runtime in ("torch", "onnxruntime"):
        console.print(f"{runtime:>11}: batch 1 {d['optimal'][f'{runtime}_ms_batch1']:.2f} ms (full depth "
                      f"{d['full'][f'{runtime}_ms_batch1']:.2f}, ×{d['speedup'][f'{runtime}_ms_batch1']:.1f} faster); "
                      f"batch 128 {d['optimal'][f'{runtime}_img_s_batch128']:,.0f} img/s (full "
                      f"{d['full'][f'{runtime}_img_s_batch128']:,.0f}); {d['optimal']['threads']} threads",
                      soft_wrap=True, highlight=False)
    if d["int8"]:
        q = d["int8"]
        console.print(f"       int8: {out_dir / q['file']} — {q['size_mb']:.2f} MB (fp32 {d['size_mb']:.2f}), test "
                      f"{q['test_accuracy']:.2%} (fp32 {record['test_accuracy']:.2%}), batch 1 "
                      f"{q['onnxruntime_ms_batch1']:.2f} ms, batch 128 {q['onnxruntime_img_s_batch128']:,.0f} img/s",
                      soft_wrap=True, highlight=False)


def export_run(run_dir: Path, data_dir: str, console, int8: bool = False) -> None:
    """`--export RUN_DIR`: ONNX, parity and latency for a finished run, added to its odn.json."""
    import archs
    import data as datasets

    try:
        model = load(run_dir)
        record = json.loads((run_dir / "odn.json").read_text())
        dataset = datasets.load(record["data"], data_dir or None, image_size=record["image_size"])
        torch.manual_seed(record["settings"]["seed"])
        net = DepthNet(archs.build(record["arch"], num_classes=record["num_classes"], in_chans=record["in_chans"],
                                   image_size=record["image_size"]), record["num_classes"])
    except (LookupError, ValueError, OSError, datasets.DataUnavailable) as error:
        fail(str(error).strip("'\""))
    data = Data(dataset.train, dataset.val, dataset.test, dataset.mean, dataset.std)
    deploy_and_report(model, extract(net.eval(), net.max_depth), run_dir, data, record, console, int8)


def by_depth(net: DepthNet, sample: Tensor) -> dict[str, list[int]]:
    """Parameters and forward multiply-adds per image of every depth 1..N (what budgets are set against)."""
    net.eval()  # batch-norm cannot count a batch of one in training mode
    return {"params": depth_params(net),
            "macs": [forward_macs(lambda x, d=d: net(x, d), sample) for d in range(1, net.max_depth + 1)]}


def architecture_list(archs):
    """`--list-archs`: every registered name, its plugin file and its pinned block count — nothing is built."""
    from rich.table import Table

    listing = Table(title="architectures (python odn.py --describe NAME: params and multiply-adds per depth)",
                    caption=f"Also the name patterns {', '.join(sorted(archs.PATTERNS))}.")
    for name, justify in (("arch", "left"), ("blocks", "right"), ("plugin", "left")):
        listing.add_column(name, justify=justify)
    for name in archs.names():
        listing.add_row(name, str(archs.BLOCKS.get(name, "?")), f"archs/{archs.family(name)}.py")
    return listing


def depth_table(name: str, net: DepthNet, in_chans: int, num_classes: int, image_size: int):
    """`--describe NAME`: Table I's size columns for every depth of one architecture, before any training."""
    from rich.table import Table

    facts = by_depth(net, torch.zeros(1, in_chans, image_size, image_size))
    table = Table(title=f"{name}: {net.max_depth} blocks ({in_chans}×{image_size}×{image_size} input, "
                        f"{num_classes} classes)",
                  caption="FLOPs = multiply-adds per image; a depth's network is stem + its blocks + its head.")
    for column in ("depth", "params", "size MB", "MFLOPs"):
        table.add_column(column, justify="right")
    for d, (params, macs) in enumerate(zip(facts["params"], facts["macs"]), 1):
        table.add_row(f"{d}/{net.max_depth}", f"{params:,}", f"{size_mb(params):.2f}", f"{macs / 1e6:,.1f}")
    return table


PLOT_MISSING = "pictures skipped: search.png and depths.png need matplotlib — pip install 'odn[plot]', then " \
               "python odn.py plot RUN_DIR"


def plot_run(run_dir: Path) -> list[Path]:
    """search.png (Fig. 3: validation accuracy per epoch of every depth tried, the warm-up's heads, the
    target) and depths.png (accuracy, size, multiply-adds and latency against depth), from the run's
    own odn.json and history.jsonl. Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    record = json.loads((run_dir / "odn.json").read_text())
    epochs = [r for r in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines()) if r["event"] == "epoch"]
    figure, ax = plt.subplots(figsize=(9, 4.8))
    curves: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for step, r in enumerate(epochs, 1):
        if r["phase"] == "warmup":  # every head's accuracy after each warm-up epoch
            for d, acc in enumerate(r["val_by_depth"], 1):
                ax.plot(step, acc, "o", color="0.6", ms=3, label="warm-up heads" if (step, d) == (1, 1) else None)
        else:
            curves.setdefault((r["phase"], r["depth"]), []).append((step, r["val_acc"]))
    for (phase, d), points in curves.items():
        style = "-" if phase == "search" else "--"
        ax.plot(*zip(*points), style, marker=".", color=f"C{d % 10}", label=f"depth {d} {phase}")
    chosen = [points for (phase, d), points in curves.items() if d == record["depth"]]
    if chosen:
        best = max((p for points in chosen for p in points), key=lambda p: p[1])
        ax.plot(*best, "*", ms=16, color="gold", mec="black", label=f"chosen: depth {record['depth']}")
    ax.axhline(record["target"], color="red", lw=1, ls=":", label=f"target {record['target']:.2%}")
    # zoomed on the decision: the target and every depth's best, not the first epochs' low readings
    low = min([record["target"] - 0.15] + [max(a for _, a in points) - 0.02 for points in curves.values()])
    ax.set(xlabel="epoch of the run", ylabel="validation accuracy", ylim=(max(0.0, low), 1.0),
           title=f"{record['arch']} on {record['data']}: search ({record['strategy']})")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    figure.tight_layout()
    paths = [run_dir / "search.png", run_dir / "depths.png"]
    figure.savefig(paths[0], dpi=110)
    plt.close(figure)

    rows, by_depth = record["rows"], record.get("by_depth", {})
    depths = list(range(1, record["max_depth"] + 1))
    figure, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    panels = [(axes[0][0], "accuracy", [("val", [(r["depth"], r["val_accuracy"]) for r in rows]),
                                        ("test", [(r["depth"], r["test_accuracy"]) for r in rows])]),
              (axes[0][1], "size (MB, fp32)", [("", list(zip(depths, [4 * p / 2**20 for p in by_depth["params"]]))
                                                if "params" in by_depth else [(r["depth"], r["size_mb"]) for r in rows])]),
              (axes[1][0], "MFLOPs (multiply-adds per image)", [("", list(zip(depths, [m / 1e6 for m in by_depth["macs"]]))
                                                                 if "macs" in by_depth else
                                                                 [(r["depth"], r["macs"] / 1e6) for r in rows])]),
              (axes[1][1], "batch-1 latency (ms)", [("torch", [(r["depth"], r["latency_ms"]) for r in rows])])]
    for ax, title, series in panels:
        for label, points in series:
            points = [(d, v) for d, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), "o-", ms=4, label=label or None)
        ax.axvline(record["depth"], color="gold", lw=2, alpha=0.7)
        ax.set_title(title, fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0][0].axhline(record["target"], color="red", lw=1, ls=":")
    for ax in axes[1]:
        ax.set_xlabel("depth (blocks)")
    figure.suptitle(f"{record['arch']} on {record['data']}: chosen depth {record['depth']}/{record['max_depth']} "
                    f"(gold line)", fontsize=10)
    figure.tight_layout()
    figure.savefig(paths[1], dpi=110)
    plt.close(figure)
    return paths


def draw(run_dir: Path, console) -> None:
    """The run's pictures, or one line saying how to get them."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        console.print(PLOT_MISSING, markup=False, highlight=False, soft_wrap=True)
        return
    paths = plot_run(run_dir)
    console.print(f"pictures: {', '.join(str(p) for p in paths)}", highlight=False, soft_wrap=True)


def join_torchrun_job(device: str) -> str:
    """Under torchrun (WORLD_SIZE > 1) join the job: NCCL on GPUs (one per local rank), gloo on CPUs.

    Returns the device this rank trains on. A plain `python odn.py` is one process and joins nothing.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return device
    import datetime

    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    # a rank that dies leaves the others waiting in a collective: torchrun stops the job, this bounds the wait
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=datetime.timedelta(minutes=5))
    return device


def fail(message: str, code: int = 2):
    import typer

    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


CHECKPOINT = "checkpoint.safetensors"


def check_out_dir(out_dir: Path, resume: bool, force: bool, command: dict) -> Path | None:
    """Refuse, before any compute, an output that cannot be written or would silently lose a run.

    Returns the checkpoint to resume from (with --resume), after checking it was started with the
    same options: a different one would change the result.
    """
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists() and not parent.is_dir():
            fail(f"--out {out_dir}: {parent} is a file, not a folder; choose another --out")
    finished, checkpoint = (out_dir / "odn.json").exists(), out_dir / CHECKPOINT
    if resume:
        if not checkpoint.exists():
            fail(f"nothing to resume in {out_dir}: " + ("the run there has finished" if finished else
                                                        f"no {CHECKPOINT}") + "; drop --resume to start a run")
        try:
            _, facts = read_checkpoint(checkpoint, tensors=False)
        except ValueError as error:
            fail(str(error))
        for key, value in facts.get("command", {}).items():
            if command.get(key) is not None and command[key] != value:
                fail(f"--{key.replace('_', '-')} {command[key]} differs from the interrupted run's {value}: "
                     "resume with the same options, or start over with --force")
        return checkpoint
    if not force and finished:
        fail(f"{out_dir} already holds a finished run; use --force to overwrite it, or another --out")
    if not force and checkpoint.exists():
        fail(f"{out_dir} holds an interrupted run; add --resume to continue it, or --force to start over")
    existing = next(parent for parent in [out_dir, *out_dir.absolute().parents] if parent.exists())
    try:  # a file really made and removed: permission bits do not tell root about a read-only mount or /proc
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        fail(f"cannot write to --out {out_dir}: {existing} is not writable ({error.strerror or error}); "
             "choose another --out")
    if force:
        checkpoint.unlink(missing_ok=True)
    return None


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def search_left(plan: dict, epoch: dict) -> tuple[float, float]:
    """Seconds the search can still take (`fast`): at least (the depth in training now, or the first one
    after the warm-up, is the answer) and at most (every depth up to the last fails), from a `plan` event
    and the latest `epoch` event: its measured epoch time, scaled by multiply-adds to the other depths."""
    macs, d, short, long = plan["macs"], epoch["depth"], plan["short"], plan["long"]
    per_mac = epoch["seconds"] / macs[d - 1]  # a warm-up epoch is one pass at its depth, feeding every head
    this_phase = (epoch["budget"] - epoch["epoch"]) * macs[d - 1]
    tries = (short + long) * sum(macs[plan["start"] - 1:plan["last"]])
    anneal = plan.get("anneal", 0)
    if epoch["phase"] == "warmup":  # least: the first depth's short look meets the target, then its top-ups
        least = most = (plan["warmup_epochs"] - epoch["epoch"]) * macs[d - 1]
        least += (long + anneal) * macs[plan["start"] - 1]
        most += tries + anneal * macs[plan["last"] - 1]  # the anneal at the deepest depth, at most
    elif epoch["phase"] == "anneal":
        least = most = this_phase
    elif epoch["phase"] == "finetune":
        least = this_phase + anneal * macs[d - 1]
        most = least if epoch["best_val"] >= plan.get("goal", math.inf) else \
            least + (short + long) * sum(macs[d:plan["last"]]) + anneal * (macs[plan["last"] - 1] - macs[d - 1])
    else:  # a short look: a hit goes on for the rest of a long look's passes; a near miss has a whole long look
        least = this_phase + (long - short + anneal) * macs[d - 1]
        most = this_phase + long * macs[d - 1] + (short + long) * sum(macs[d:plan["last"]]) + anneal * macs[plan["last"] - 1]
    return least * per_mac, most * per_mac


def run_with_progress(net: DepthNet, data: Data, s: Settings, out_dir: Path, facts: dict, console,
                      resume: dict | None = None, stopping: Callable[[], bool] = lambda: False) -> Result:
    """Run the search with live progress; write each phase's weights as it finishes.

    On a terminal: a rich bar with the epoch's ETA. Otherwise (a log file, nohup, a batch job): one
    plain line per epoch, and one a minute inside long epochs, so a log is never silent for long.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if rank_and_world()[0]:  # another rank of a torchrun job: quiet, but it stops with the job
        return search(net, data, s, lambda record: stopping() if record["event"] == "batch" else None, resume)
    out_dir.mkdir(parents=True, exist_ok=True)
    history_file = out_dir / "history.jsonl"
    if resume:  # keep the epochs the checkpoint holds; the ones after it are trained again
        done = sum(r["epochs"] for r, _ in resume["journal"]) + resume["phase"]["epochs"]
        logged = history_file.read_text().splitlines() if history_file.exists() else []
        kept, epochs = [], 0
        for line in logged:
            epochs += json.loads(line)["event"] == "epoch"
            if json.loads(line)["event"] != "epoch" or epochs <= done:
                kept.append(line)
        marker = {"event": "resume", "epochs_done": done, "epochs_logged": epochs}
        history_file.write_text("".join(line + "\n" for line in kept) + json.dumps(marker) + "\n")
    history = history_file.open("a" if resume else "w")
    live = console.is_terminal
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("eta"),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    images = len(data.train[1])
    clock = {"epoch": time.perf_counter(), "said": time.perf_counter(), "seen": 0, "name": "warm-up"}

    def on_event(record: dict) -> None:
        now = time.perf_counter()
        if record["event"] == "checkpoint":
            save_checkpoint(out_dir / CHECKPOINT, record, facts)
            if clock.get("line"):  # an epoch's line appears once its checkpoint is on disk
                console.print(clock.pop("line"), highlight=False, soft_wrap=True)
            return
        if record["event"] == "batch":
            progress.advance(task, record["images"])
            clock["seen"] += record["images"]
            if not live and now - clock["said"] >= 60:  # a heartbeat inside long epochs
                done = clock["seen"] / images
                eta = (now - clock["epoch"]) * (1 - done) / max(done, 1e-9)
                console.print(f"  {clock['name']}: {done:.0%} of the epoch, {clock['seen'] / (now - clock['epoch']):.0f} "
                              f"img/s, epoch eta {duration(eta)}", highlight=False)
                clock["said"] = now
            return stopping()
        if record["event"] == "plan":
            clock["plan"] = record
            return
        if record["event"] == "speed":
            console.print(f"speed: bf16 autocast {'on' if record['amp'] else 'off'}, channels-last "
                          f"{'on' if record['channels_last'] else 'off'} (fastest of "
                          f"{len(record['seconds_per_image'])} timed; --amp/--no-amp, --channels-last/"
                          "--no-channels-last to force)", highlight=False, soft_wrap=True)
            return
        if record["event"] == "epoch":
            history.write(json.dumps(record) + "\n")
            history.flush()
            phase_eta = ""
            seconds = record.get("seconds") or (now - clock["epoch"])
            if record.get("budget"):
                left = record["budget"] - record["epoch"]
                phase_eta = f" · phase eta {duration(left * seconds)} ({left} epoch{'s' if left != 1 else ''})"
            elif "since_best" in record:
                left = s.patience - record["since_best"]
                phase_eta = f" · ≥ {left} epochs (≥ {duration(left * seconds)}) to converge"
            since = f" best {record['best_val']:.4f} · {record['since_best']}/{s.patience} w/o gain" \
                if "best_val" in record and not record.get("budget") else ""
            if clock.get("plan") and record["phase"] in ("warmup", "search", "finetune", "anneal") and record.get("seconds"):
                least, most = (duration(left) for left in search_left(clock["plan"], record))
                phase_eta += f" · search {least} left" if least == most else f" · search ≥ {least}, ≤ {most} left"
            name = f"{record['phase']} d={record['depth']}"
            status = f"lr {record['lr']:.2g} loss {record['loss']:.3f} val {record['val_acc']:.4f}{since}{phase_eta}"
            if live:
                progress.update(task, completed=0, description=f"{name} ep {record['epoch'] + 1}", status=status)
            else:
                clock["line"] = f"{name} epoch {record['epoch']}: {status} · {seconds:.0f} s/epoch"
            clock.update(epoch=now, said=now, seen=0, name=f"{name} ep {record['epoch'] + 1}")
            return
        weights = record.pop("weights")
        console.print(f"{record['name']:>8} depth {record['depth']}: best val {record['best_val']:.4f} "
                      f"after {record['epochs']} epochs, {record['seconds']:.0f} s", highlight=False)
        clock.update(epoch=now, said=now, seen=0, name=record["name"])
        meta = {**facts, "phase": record["name"], "depth": record["depth"]}
        if record["name"] in ("warmup", "baseline"):
            save_weights(out_dir / f"{record['name']}.safetensors", weights, meta)
        else:
            save_weights(out_dir / f"depth-{record['depth']}.safetensors", weights, meta)

    with Progress(*columns, console=console, transient=True, disable=not live) as progress, history:
        task = progress.add_task("warm-up", total=images, status="")
        return search(net, data, s, on_event, resume)


def run_record(result: Result, rows: list[dict], s: Settings, facts: dict, max_depth: int,
               train_images: int) -> dict:
    """Everything odn.json holds: the facts to rebuild the network, its metrics and the run's cost."""
    import importlib.metadata as metadata

    chosen = next(r for r in rows if r["chosen"])
    full = rows[-1]  # the full depth: trained alone (--baseline), searched, or untrained
    versions = {}
    for package in ("torch", "timm", "safetensors"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {**facts, "depth": result.depth, "max_depth": max_depth, "target": s.target,
            "target_reached": result.target_reached, "strategy": s.strategy,
            "budget": result.budget,
            "val_accuracy": chosen["val_accuracy"], "test_accuracy": chosen["test_accuracy"],
            "params": chosen["params"], "size_mb": chosen["size_mb"], "flops": chosen["macs"],
            "latency_ms": chosen["latency_ms"],
            "full": {k: full[k] for k in ("params", "size_mb", "latency_ms", "val_accuracy", "test_accuracy")}
            | {"flops": full["macs"]},
            "search_cost": result.cost, "phases": [asdict(p) for p in result.phases], "rows": rows,
            "baseline_cost": asdict(result.baseline) if result.baseline else None,
            # measured against --baseline when it ran; else in units of one full-depth epoch
            "cost_ratio": result.cost["flops"] / result.baseline.flops if result.baseline else None,
            "full_depth_epoch_flops": 3.0 * result.macs[-1] * train_images,
            "settings": asdict(s) | (result.speed and {k: result.speed[k] for k in ("amp", "channels_last")} or {}),
            "speed": result.speed, "cpu": cpu_model(), "threads": torch.get_num_threads(), "versions": versions}


def cpu_model() -> str:
    """The CPU's model name (what `lscpu` shows): speed settings and timings depend on it."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def report_table(rows: list[dict], record: dict):
    """Table I as a rich table: a pure function of the measured rows."""
    from rich.table import Table

    table = Table(title=f"{record['arch']} on {record['data']} (FLOPs = multiply-adds per image)")
    for name in ("depth", "params", "size MB", "size −%", "MFLOPs", "latency ms", "epochs", "train TFLOP",
                 "val acc", "test acc"):
        table.add_column(name, justify="right")
    for r in rows:
        label = f"{r['depth']}/{r['max_depth']}" + {"search": "", "baseline": " full†", "full": " full"}[r["kind"]]
        untrained = "— ‡" if r["kind"] == "full" else "—"
        percent = lambda v: untrained if v is None else f"{v:.2%}"
        table.add_row(label + (" ★" if r["chosen"] else ""), f"{r['params']:,}", f"{r['size_mb']:.2f}",
                      f"{r['size_reduction']:.2%}", f"{r['macs'] / 1e6:.2f}", f"{r['latency_ms']:.2f}",
                      str(r["epochs"] or "—"), f"{r['train_flops'] / 1e12:.2f}" if r["epochs"] else "—",
                      percent(r["val_accuracy"]), percent(r["test_accuracy"]),
                      style="bold" if r["chosen"] else None)
    cost = record["search_cost"]
    ratio = (f" = {record['cost_ratio']:.2f}× the full-depth baseline" if record["cost_ratio"] is not None
             else f" ≈ {cost['flops'] / record['full_depth_epoch_flops']:.1f} full-depth epochs")
    table.caption = (f"search cost (warm-up + search + fine-tune): {cost['epochs']} epochs, "
                     f"{cost['images']:,} training images, {cost['flops'] / 1e12:.2f} TFLOP{ratio}, "
                     f"{cost['seconds']:.0f} s")
    kinds = {r["kind"] for r in rows}
    if "baseline" in kinds:
        table.caption += "\n† the full depth trained alone (--baseline), same recipe and start; not in the search cost"
    if "full" in kinds:
        table.caption += "\n‡ not trained: the search stopped shallower; --baseline trains the full depth alone"
    return table


def main() -> None:
    """Entry point of `python odn.py` and of the `odn` console script."""
    import inspect
    from typing import Annotated

    import typer

    # help texts are attached here so that importing this file never needs typer
    signature = inspect.signature(cli, eval_str=True)
    cli.__signature__ = signature.replace(parameters=[
        p.replace(annotation=Annotated[p.annotation, typer.Option(help=HELP[p.name])])
        for p in signature.parameters.values()])
    import sys

    if sys.argv[1:2] == ["plot"]:  # python odn.py plot RUN_DIR: redraw a finished run's pictures
        from rich.console import Console
        run_dir = Path(sys.argv[2]) if len(sys.argv) == 3 else None
        if run_dir is None or not all((run_dir / name).is_file() for name in ("odn.json", "history.jsonl")):
            print("error: usage: python odn.py plot RUN_DIR (a folder with a finished run's odn.json and "
                  "history.jsonl)", file=sys.stderr)
            raise SystemExit(2)
        try:
            return draw(run_dir, Console())
        except (ValueError, KeyError, TypeError, OSError) as error:  # a damaged record: one line, no traceback
            print(f"error: cannot draw {run_dir}: {type(error).__name__}: {error}", file=sys.stderr)
            raise SystemExit(1)
    app = typer.Typer(pretty_exceptions_show_locals=False, add_completion=False)
    app.command()(cli)
    app()


if __name__ == "__main__":
    main()
