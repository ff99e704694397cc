"""odn: Optimally Deep Networks — train a CNN only as deep as the data set needs.

Progressive depth expansion (Optimally Deep Networks, §III): split a network into blocks, give
every depth its own head, warm up all depths at once, then train the shallowest depth until it
converges and add one block at a time until the target accuracy is met. The first depth that
meets it is fine-tuned and extracted as a standalone, much smaller network.

    python odn.py                                            # offline default: ResNet-18 on 8×8 digits
    python odn.py --arch resnet18 --data mnist --target 0.99                   # one-cycle schedules (fast)
    python odn.py --arch resnet18 --data mnist --target 0.99 --strategy paper  # the paper's exact protocol

Reading order, as the paper goes: the protocol (`DepthPartitionable`); the multi-head model (`DepthNet`), `extract`;
one epoch (`train_epoch`); `Settings`, the plateau rule; one phase (`train_phase`), `warmup`; the strategies `paper`
and `fast`; `search` (Algorithm 1); checkpoints; measurement; `save` / `load`. The CLI and report: odn_cli.py.

Copied alone into a project it needs only torch (and safetensors): `search`, `extract`, `save`, `load`.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import sys
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
    """A network cut into a stem and an ordered list of blocks. Depth d means stem + blocks[:d]; odn adds one
    head per depth and owns the slicing. `channels[i]` is the number of output channels of blocks[i] — what head
    i+1 needs. Optional: `make_head(channels, num_classes) -> nn.Module` replaces the default global-average-pool
    + linear head (e.g. token pooling for a ViT)."""

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
        self.stem, self.blocks = net.stem, nn.ModuleList(net.blocks)
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
        if missing := set(keyed) - set(self.state_dict()):
            raise KeyError(f"weights do not fit depth {depth}: {sorted(missing)[:3]}")
        self.load_state_dict(keyed, strict=False)


class Extracted(nn.Module):
    """The deployable network: stem + first d blocks + head d (§III-D)."""

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], head: nn.Module):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head  # keys blocks.i.*, as in DepthNet

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)))


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
            memory_format: torch.memory_format = torch.contiguous_format, order: Tensor | None = None, first: int = 0):
    """Yield normalised (x, y) batches; shuffled when a generator is given (in `order`, from image `first`). Under
    torchrun every rank draws the same order and takes its share of each batch: the batches one process would."""
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
    """Exact fraction correct (the reference rounded to 0.1 pt); one per head for stacked logits (heads, batch, …)."""
    (x, y), (rank, world) = split, rank_and_world()
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
    """`values` reduced over the ranks (a sum unless `op`), on the backend's device (NCCL: GPU, gloo: CPU)."""
    if rank_and_world()[1] == 1:
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = values.to(device, copy=True)
    dist.all_reduce(reduced, op or dist.ReduceOp.SUM)
    return reduced.to(values.device)


def check_agreement(phase: Phase) -> None:
    """Ranks must agree on every decision; assert it rather than hope for it (one collective per epoch)."""
    if rank_and_world()[1] > 1:
        mine = torch.tensor([phase.best_val, phase.epochs, phase.since_best], dtype=torch.float64)
        low, high = collective(mine, dist.ReduceOp.MIN), collective(mine, dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"ranks disagree at depth {phase.depth} ({phase.name}, epoch {phase.epochs}): "
                               f"best val / epochs / stale epochs range {low.tolist()}..{high.tolist()}")


class Active(nn.Module):
    """The parts that train at `depth` (every head in the warm-up): under DDP only these are all-reduced, with
    no `find_unused_parameters`. Batch-norm statistics stay per rank (SyncBatchNorm costs more than it buys)."""

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


class Interrupted(Exception):
    """The caller asked to stop (a signal): raised at a batch boundary, after a checkpoint was emitted."""


def train_epoch(loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: torch.optim.Optimizer, data: Data, s: Settings,
                generator: torch.Generator, on_batch: Callable[[int], bool | None] | None = None,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, position: dict | None = None,
                alone: bool = False) -> tuple[float, int]:
    """One pass over the training split; returns (mean loss, images seen), with one host sync. A `scheduler`
    steps after every batch (`fast`'s one-cycle). When `on_batch` returns True the epoch stops at that batch
    and raises `Interrupted` with its `position` (order, next image, running loss) to continue it exactly.
    `alone`: this process only, without collectives (a speed probe that rank 0 times by itself)."""
    device = data.training_device
    # bf16 where the hardware has it (CPUs, Ampere+ GPUs); fp16 with loss scaling on older GPUs
    half = torch.float16 if device.type == "cuda" and not torch.cuda.is_bf16_supported() else torch.bfloat16
    dtype = half if s.amp else torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    position = position or {"order": torch.randperm(len(data.train[1]), generator=generator),
                            "next": 0, "total": 0.0, "images": 0}
    rank, world = (0, 1) if alone else rank_and_world()
    reduce = collective if world > 1 else (lambda values: values)
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
            total, images = reduce(torch.stack([total.double(), total.new_tensor(images, dtype=torch.float64)])).tolist()
            raise Interrupted({"order": order, "next": first + (i + 1) * s.batch_size, "total": total,
                               "images": int(images)})
    # the loss and the images of every rank: FLOPs and the logged loss cover the whole job
    total, images = reduce(torch.stack([total.double(), total.new_tensor(images, dtype=torch.float64)])).tolist()
    return total / max(images, 1), int(images)


@dataclass
class Settings:
    """Every protocol number. The default strategy is `fast` (one-cycle schedules); `strategy="paper"` runs the
    paper's (warm-up 3 epochs at LR 0.001, LR 0.01, batch 128, LR × 0.6 after 5 epochs without a best, stop at 23)."""
    target: float = 0.98
    strategy: str = "fast"
    warmup_epochs: int | None = None  # None: the strategy's own (fast 0, none: see `restart_at_peak`; the rest 3)
    warmup_lr: float | None = None  # None: the strategy's own (fast 0.01, the rest 0.001)
    warmup_steps: int | None = None  # the warm-up's most steps; None: the strategy's own (fast 100, the rest no cap)
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
    # fast: every depth gets a short one-cycle look; a near miss gets a long one; a hit, a second cycle
    short_epochs: int = 3
    long_epochs: int = 8
    min_steps: int = 100  # a short look lasts at least this many steps; the long one keeps its ratio
    peak_lr: float = 0.2
    reach: float = 2.0  # within reach: short-look validation error ≤ reach × the target's error (1 − target)
    reach_slack: float = 1.3  # and short-look error × a long look's gain ≤ this × the target's error
    gain_prior: float = 0.8  # a long look's gain (its error ÷ the short look's) until one is measured
    anneal_epochs: int = 4  # the chosen depth then trains on at a falling LR, up to long + this many passes
    anneal_gain: float = 0.93  # an anneal's error ÷ its long look's; a long look it would lift to the target gets it
    relook: bool = True  # a short look stretched to min_steps that misses gets as many steps again (small data)
    baseline: bool = False  # also train the full depth from the same initial weights (Table I's full row)
    seed: int = 0
    amp: bool = False  # bf16 autocast (fp16 + loss scaling where bf16 is missing); odn_cli times both ways
    channels_last: bool = False  # odn_cli times both ways
    compile: bool = False

    def __post_init__(self) -> None:
        fast = self.strategy == "fast"
        self.warmup_epochs = (0 if fast else 3) if self.warmup_epochs is None else self.warmup_epochs
        self.warmup_lr = (0.01 if fast else 0.001) if self.warmup_lr is None else self.warmup_lr
        self.warmup_steps = (100 if fast else 0) if self.warmup_steps is None else self.warmup_steps

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
        for names, within, bound in ((("batch_size", "patience", "lr_patience", "short_epochs", "long_epochs",
                                       "min_steps"), lambda v: v >= 1, "≥ 1"),
                                     (("warmup_epochs", "warmup_steps", "anneal_epochs", "max_epochs", "momentum",
                                       "weight_decay", "tolerance"), lambda v: v >= 0, "≥ 0"),
                                     (("lr", "warmup_lr", "peak_lr", "gain_prior"), lambda v: v > 0, "> 0"),
                                     (("lr_decay",), lambda v: 0 < v < 1, "in (0, 1)"),
                                     (("anneal_gain",), lambda v: 0 < v <= 1, "in (0, 1]"),
                                     (("reach", "reach_slack"), lambda v: v >= 1, "≥ 1")):
            for name in names:
                if not within(getattr(self, name)):
                    raise ValueError(f"{option(name)} is out of range: must be {bound}")
        if self.tolerance >= self.target:
            raise ValueError(f"{option('tolerance')} must be below --target {self.target}")
        if self.short_epochs > self.long_epochs:
            raise ValueError(f"{option('short_epochs')} must be ≤ --long-epochs {self.long_epochs}")


@dataclass
class Phase:
    """One phase of the run and what it cost; serialisable, so a run can be recorded and resumed."""
    name: str  # warmup | search | relook | finetune | anneal | baseline
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
    """§III-C stopping rule after one epoch: returns (new best, decay the LR now). A new best resets the counter;
    every 5th epoch without one multiplies the LR by 0.6 (the paper: "reduced by 60 %"; its code: × 0.6). Stop: 23."""
    improved = val_acc > phase.best_val
    phase.val_curve.append(val_acc)
    phase.best_val, phase.since_best = (val_acc, 0) if improved else (phase.best_val, phase.since_best + 1)
    decay = not improved and phase.since_best % s.lr_patience == 0
    phase.converged = phase.since_best >= s.patience or 0 < s.max_epochs <= phase.epochs
    return improved, decay


# ----------------------------------------------------------------------------------------------
# one phase of training: a depth trained until its stop rule says so (§III-C), and the warm-up (§III-B)


@dataclass
class Result:
    depth: int  # the optimal depth, or the best depth tried when the target was not reached
    target_reached: bool
    val_accuracy: float
    phases: list[Phase]
    weights: dict[int | str, dict[str, Tensor]]  # best weights per depth trained (+ "baseline"), `Extracted` keys
    warmup_weights: dict[str, Tensor]
    macs: list[int]  # forward multiply-adds per image at depth 1..N
    params: list[int]  # parameters of the extracted network at depth 1..N
    baseline: Phase | None = None  # the full depth trained alone, when asked for; not part of the cost

    @property
    def cost(self) -> dict[str, float]:
        return {k: sum(getattr(p, k) for p in self.phases) for k in ("epochs", "images", "flops", "seconds")}


def sgd(params, lr: float, s: Settings) -> torch.optim.SGD:
    nesterov = s.strategy == "fast" and s.momentum > 0  # the fast recipe; the paper's SGD is plain momentum
    return torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=nesterov)


def steps_per_epoch(images: int, batch_size: int, world: int = 1) -> int:
    return images // batch_size + (images % batch_size >= 2 * world)  # `batches` drops a last batch of one a rank


def train_phase(net: DepthNet, phase: Phase, data: Data, optimizer: torch.optim.Optimizer, s: Settings,
                macs: int, generator: torch.Generator, emit: Callable[[dict], None],
                stop: Callable[[Phase, Settings], bool] | None = None,
                schedule: Callable[[int, int], float] | None = None, resume: dict | None = None) -> dict[str, Tensor]:
    """Train at one depth until `stop` (default: the plateau rule's convergence); returns the best weights. Without
    a `schedule` the plateau rule decays the LR (§III-C); with one, the LR is `schedule(step, steps)` × the phase's
    LR over its fixed epochs. A `checkpoint` event after every epoch carries the state; `resume` continues it."""
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
        account(phase, images, macs, time.perf_counter() - start, loss)
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


def warmup(net: DepthNet, phase: Phase, data: Data, s: Settings, macs: list[int], generator: torch.Generator,
           emit: Callable[[dict], object], resume: dict | None = None) -> dict[str, Tensor]:
    """§III-B: a few epochs of every depth at once (summed loss of all heads); every expansion starts from them."""
    depth = phase.depth
    optimizer = sgd(nn.ModuleList([net.stem, *net.blocks[:depth], *net.heads[:depth]]).parameters(), s.warmup_lr, s)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(s.warmup_epochs, 1))
    forward = trainable(net, depth, every_head=True)
    loss_fn = lambda x, y: sum(F.cross_entropy(logits, y) for logits in forward(x))
    position = restore(resume, net, phase, optimizer, schedule, generator)[1] if resume else None
    images = warmup_images(s, len(data.train[1]))
    while phase.epochs < s.warmup_epochs:
        start = time.perf_counter()
        net.train()
        position = position or {"order": torch.randperm(len(data.train[1]), generator=generator)[:images],
                                "next": 0, "total": 0.0, "images": 0}
        loss, images = train_epoch_or_checkpoint(loss_fn, optimizer, data, s, generator, emit, None, position,
                                                 lambda: snapshot(net, phase, optimizer, schedule, generator, None))
        position = None
        lr = optimizer.param_groups[0]["lr"]
        schedule.step()
        net.eval()
        val = accuracy(lambda x: torch.stack(net.forward_all(x, depth)), data.val, data)  # every head, one pass
        # one pass through every block feeds every head: the cost of one full-depth forward
        account(phase, images, macs[depth - 1], time.perf_counter() - start, loss)
        phase.best_val = max(phase.best_val, max(val))
        check_agreement(phase)
        emit({"event": "epoch", "phase": "warmup", "depth": depth, "epoch": phase.epochs, "loss": loss,
              "lr": lr, "val_acc": max(val), "val_by_depth": val, "seconds": phase.seconds / phase.epochs,
              "budget": s.warmup_epochs})
        emit({"event": "checkpoint", **snapshot(net, phase, optimizer, schedule, generator, None)})
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def warmup_images(s: Settings, images: int) -> int:
    """Images a warm-up epoch trains on (`warmup_steps` caps the warm-up; see `Settings`)."""
    return min(images, math.ceil(s.warmup_steps / max(s.warmup_epochs, 1)) * s.batch_size) if s.warmup_steps else images


def train_epoch_or_checkpoint(loss_fn, optimizer, data: Data, s: Settings, generator: torch.Generator, emit,
                              scheduler, position: dict | None, state: Callable[[], dict]) -> tuple[float, int]:
    """`train_epoch`; when a signal stops it mid-epoch, emit a checkpoint of that very batch first."""
    try:
        return train_epoch(loss_fn, optimizer, data, s, generator,
                           lambda n: emit({"event": "batch", "images": n}), scheduler, position)
    except Interrupted as stopped:
        emit({"event": "checkpoint", **state(), "position": stopped.args[0]})
        raise


def account(phase: Phase, images: int, macs: int, seconds: float, loss: float) -> None:
    """Add one epoch to the phase's cost; a NaN or infinite loss ends the run (nothing after it could be trusted)."""
    phase.epochs += 1
    phase.images += images
    phase.flops += 3.0 * macs * images  # forward + backward ≈ 3 forward passes
    phase.seconds += seconds
    if not math.isfinite(loss):
        raise FloatingPointError(f"the training loss became {loss} at depth {phase.depth} ({phase.name}, epoch "
                                 f"{phase.epochs}): lower the learning rate (--peak-lr for fast, --lr for paper, "
                                 "or warmup_lr)")


# ----------------------------------------------------------------------------------------------
# the strategies. A strategy is two plain functions and at most one more: `start` prepares the
# network for a depth and returns the LR to begin with; `stop` says after each epoch whether the
# phase is over; an optional per-step LR `schedule` (then a depth within reach gets a long look)


def restart_from_warmup(net: DepthNet, depth: int, first: bool, warm: dict[str, Tensor], s: Settings) -> float:
    """The paper's expansion (§III-C): reload the warm-up weights; deeper depths start at half the LR it was
    *given*, as the reference does (halving the decayed LR would start depth 3 near 2e-6 and learn nothing)."""
    net.load_state_dict(warm)
    return s.lr if first else s.lr / 2


def converged(phase: Phase, s: Settings) -> bool:
    """The paper's rule: every phase runs until 23 epochs bring no new best."""
    return phase.converged


def restart_at_peak(net: DepthNet, depth: int, first: bool, warm: dict[str, Tensor], s: Settings) -> float:
    """`fast`: every depth starts from the warm-up weights at the one-cycle peak LR, 20 × the warm-up's; it erases
    what a warm-up taught, so `fast` has none: its looks start from the initial weights, as the oracle's do."""
    net.load_state_dict(warm)
    return s.peak_lr


def end_of_schedule(phase: Phase, s: Settings) -> bool:
    """`fast` judges a depth only at the end of its schedule: mid-schedule accuracy is no verdict."""
    return phase.epochs >= phase.budget


def cosine(step: int, steps: int) -> float:
    """LR factor falling from 1 to zero as a cosine over `steps` (the anneal; one-cycle after its rise)."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))


def one_cycle(step: int, steps: int, warmup: float = 0.25) -> float:
    """LR factor: linear up over the first quarter, then a cosine to zero (super-convergence, Smith & Topin)."""
    up = max(1, round(warmup * steps))
    return (step + 1) / up if step < up else cosine(step - up, steps - up)


def schedule_epochs(phase: Phase, s: Settings, steps_per_epoch: int) -> int:
    """`fast`: a search phase is a short look, a near miss's (and the baseline) a long one, an anneal the rest of
    `long_epochs + anneal_epochs` passes. On small data a look lasts ≥ `min_steps`; the long one stretches alike."""
    short = max(s.short_epochs, math.ceil(s.min_steps / steps_per_epoch))
    long = math.ceil(short * s.long_epochs / s.short_epochs)
    if phase.name == "anneal":
        return max(0, s.long_epochs + s.anneal_epochs - long)
    return short if phase.name == "search" else long


def within_reach(phase: Phase, s: Settings, gain: float | None = None) -> bool:
    """`fast`: worth the long schedule, which a short one understates: short-look error ≤ `reach` × the target's, and
    × `gain` (long ÷ short error, the smallest seen; `gain_prior` before any) ≤ `reach_slack` × the target's."""
    error, goal_error, gain = 1 - phase.best_val, 1 - (s.target - s.tolerance), s.gain_prior if gain is None else gain
    return error <= s.reach * goal_error and error * gain <= s.reach_slack * goal_error


def scaling_exponent(short: Phase) -> float:
    """`fast`: α in error ∝ params^−α from a depth to the next, half how fast `short`'s error fell with its passes
    (e ∝ passes^−2α, first epoch to last; 0.5 where it did not fall): fast with training, fast with capacity."""
    first, end, n = 1 - (short.val_curve or [short.best_val])[0], 1 - short.best_val, len(short.val_curve)
    return min(2.0, math.log(first / end) / math.log(n) / 2) if n > 1 and first > end > 0 else 0.5


def relook_error(before: float, after: float, passes: int, long: int) -> float:
    """A second look's error carried on to a long look's passes: e ∝ passes^−α, α from the doubling of passes
    that took the short look's error `before` to the second look's `after` (`passes` in all)."""
    return after * (long / passes) ** -max(0.0, math.log2(before / after)) if after > 0 else 0.0


def anneal_phase(depth: int, best_val: float, s: Settings, steps_per_epoch: int, name: str = "anneal") -> Phase:
    """`fast`'s last step for a depth: a tenth of the peak LR for the rest of `long_epochs + anneal_epochs`
    passes (budget 0: none), from `best_val`, so its weights are kept only if validation improves."""
    return Phase(name, depth, s.peak_lr / 10, best_val=best_val,
                 budget=schedule_epochs(Phase("anneal", depth, 0), s, steps_per_epoch))


def anneal_reaches(long: Phase, s: Settings, steps_per_epoch: int) -> bool:
    """`fast`: a long look that missed gets its anneal now where its error × `anneal_gain` (per `anneal_epochs` passes
    of the anneal's budget) meets the target's: the oracle, and the answer, are judged after their anneal."""
    budget, goal_error = anneal_phase(long.depth, long.best_val, s, steps_per_epoch).budget, 1 - s.target + s.tolerance
    return budget > 0 and (1 - long.best_val) * s.anneal_gain ** (budget / s.anneal_epochs) <= goal_error


def anneal(net: DepthNet, phase: Phase, best: dict[str, Tensor], data: Data, s: Settings, macs: int,
           emit: Callable[[dict], object], resume: dict | None = None) -> dict[str, Tensor]:
    """Train an `anneal_phase` on from `best`, the LR a cosine to zero; returns the best weights (or `best`)."""
    d = phase.depth
    net.load_state_at(d, best)  # a resumed run skipped the phase that left them in the net
    return train_phase(net, phase, data, sgd(net.parameters_at(d), phase.lr, s), s, macs,
                       shuffler(s, Phase("anneal", d, 0)), emit, end_of_schedule, cosine, resume)


# name → (start, stop, schedule); a research strategy registers itself here too (bench/ has two)
STRATEGIES: dict[str, tuple[Callable[..., float], Callable[[Phase, Settings], bool],
                            Callable[[int, int], float] | None]] = {
    "fast": (restart_at_peak, end_of_schedule, one_cycle),
    "paper": (restart_from_warmup, converged, None),
}


def shuffler(s: Settings, phase: Phase) -> torch.Generator:
    """Each phase shuffles from its own seed: a depth sees the same batches however long earlier ones ran."""
    return torch.Generator().manual_seed(zlib.crc32(f"{s.seed}/{phase.name}/{phase.depth}".encode()))


# ----------------------------------------------------------------------------------------------
# the search (Algorithm 1): warm-up, progressive depth expansion, fine-tuning


def search(net: DepthNet, data: Data, s: Settings, on_event: Callable[[dict], object] | None = None,
           resume: dict | None = None) -> Result:
    """Find the shallowest depth of `net` whose validation accuracy reaches `s.target` (Algorithm 1): warm up every
    depth, train depth by depth until the target is met, fine-tune that depth and leave its best weights in `net`.
    Events (batch, epoch, phase, a `checkpoint` each epoch) go to `on_event`; `resume`, a checkpoint, continues it."""
    costs, last = prepare(net, data, s), s.max_depth or net.max_depth
    start, stop, schedule = STRATEGIES[s.strategy]
    goal = s.target - s.tolerance
    narrow = lambda phase: 1 - phase.best_val <= s.reach_slack * (1 - goal)  # a miss within the rule's slack
    macs, per_epoch = costs["macs"], steps_per_epoch(len(data.train[1]), s.batch_size, rank_and_world()[1])
    journal, emit, run = journaled(on_event, resume, s)  # every finished phase, what a resumed run replays
    finished = lambda: [Phase(**record) for record, _ in journal if record["name"] != "baseline"]
    emit({"event": "start", "macs": macs, "params": costs["params"], "last": last})
    weights = {}

    def top_up(d: int, phase: Phase) -> Phase:  # fast's anneal of depth d, from its best weights
        weights[d] = run(phase, lambda live: anneal(net, phase, weights[d], data, s, macs[d - 1], emit, live))
        return phase

    def train(phase: Phase, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
        return run(phase, lambda live: train_phase(net, phase, data, optimizer, s, macs[phase.depth - 1], generator,
                                                   emit, stop, schedule, live))

    baseline = full_depth_baseline(net, data, s, macs, per_epoch, emit, run, weights) if s.baseline else None

    # §III-B: warm up all depths at once, keep the weights for every expansion (fast: none, the initial weights)
    phase = Phase("warmup", last, s.warmup_lr)
    warm = run(phase, lambda live: warmup(net, phase, data, s, macs, shuffler(s, phase), emit, live)) \
        if s.warmup_epochs else {k: v.detach().clone() for k, v in net.state_dict().items()}

    def fine_tune(d: int, searched: Phase, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                  continuing: bool) -> Phase:
        """§III-D: train depth d on until it converges; returns the fine-tune phase."""
        if schedule and (searched.best_val >= goal or searched.name == "relook"):
            # fast: a hit goes on through one more one-cycle to a long look's passes (kept only if validation
            # improves); a second look that points within reach, for a long look's passes beyond its short look
            long = schedule_epochs(Phase("finetune", d, 0), s, per_epoch)
            short = schedule_epochs(Phase("search", d, 0), s, per_epoch)
            made = searched.budget if searched.best_val >= goal else searched.budget - short  # the passes it counts
            if long == made:
                return searched  # it has had a long look's passes already
            phase = Phase("finetune", d, s.peak_lr, best_val=searched.best_val, budget=long - made)
            net.load_state_at(d, weights[d])  # a resumed run skipped the phase that left them in the net
            optimizer, generator = sgd(net.parameters_at(d), phase.lr, s), shuffler(s, phase)
        elif schedule:  # fast, a near miss: the long schedule, from the warm-up weights like the short look
            phase = Phase("finetune", d, start(net, d, False, warm, s))
            optimizer, generator = sgd(net.parameters_at(d), phase.lr, s), shuffler(s, phase)
        else:  # same optimizer; a phase a rule stopped before it converged is continued with its counters
            phase = Phase("finetune", d, optimizer.param_groups[0]["lr"], best_val=searched.best_val,
                          since_best=searched.since_best if continuing else 0)
            generator = generator if continuing else shuffler(s, phase)
        weights[d] = train(phase, optimizer, generator)
        return phase

    # §III-C: train the shallowest depth until it stops; below target → one more block
    reached, tuned, gain, straight = False, {}, None, False
    for d in range(s.start_depth, last + 1):
        phase = Phase("search", d, start(net, d, d == s.start_depth, warm, s))
        optimizer, generator = sgd(net.parameters_at(d), phase.lr, s), shuffler(s, phase)
        if straight:  # fast: this depth is within reach by the one before (a narrow miss after its long look, or
            reached, promising, looked = False, True, phase  # its look's prediction), so it gets its long look at once
        else:
            weights[d] = train(phase, optimizer, generator)
            reached, promising, looked = phase.best_val >= goal, schedule and within_reach(phase, s, gain), phase
        if schedule and s.relook and not (reached or promising) and phase.budget > s.short_epochs:
            # small data: a look stretched to `min_steps` is still few steps; one more tells training from capacity
            looked = Phase("relook", d, s.peak_lr, best_val=phase.best_val, budget=phase.budget)
            net.load_state_at(d, weights[d])
            weights[d] = train(looked, sgd(net.parameters_at(d), looked.lr, s), shuffler(s, looked))
            looked = dataclasses.replace(looked, budget=phase.budget + looked.budget)  # passes made at depth d
            reached = looked.best_val >= goal
            # within reach where its error, carried on to a long look's passes, is ≤ slack × the target's
            predicted = relook_error(1 - phase.best_val, 1 - looked.best_val, looked.budget,
                                     schedule_epochs(Phase("finetune", d, 0), s, per_epoch))
            promising = predicted <= s.reach_slack * (1 - goal)
        # fast judges a near miss only after the long schedule, which is then also its fine-tune
        if reached or promising:
            tuned[d] = fine_tune(d, looked, optimizer, generator, continuing=not phase.converged)
            if not reached:  # a near miss's long look (not a continuation): what it did to the error, measured
                gain = gain if straight or looked is not phase else \
                    min(gain or math.inf, (1 - tuned[d].best_val) / (1 - phase.best_val))
                reached = tuned[d].best_val >= goal
                if not reached and schedule and anneal_reaches(tuned[d], s, per_epoch):
                    # judged as the oracle is, after its anneal (as the answer it would get it anyway)
                    tuned[d] = top_up(d, anneal_phase(d, tuned[d].best_val, s, per_epoch))
                    reached = tuned[d].best_val >= goal
                straight = not reached and narrow(tuned[d])
        elif schedule and d < last:  # rejected on its look(s): a next depth predicted within reach would only
            # throw its short look away (a near miss's long look starts over; a hit's goes on to the same passes)
            error = (1 - phase.best_val) * (costs["params"][d] / costs["params"][d - 1]) ** -scaling_exponent(phase)
            straight = within_reach(Phase("search", d + 1, 0, best_val=1 - error), s, gain)
        if reached:
            break  # §III-D: the first depth that meets the target, already fine-tuned

    phases = finished()
    if not reached:  # the target is out of reach: fine-tune the best depth tried
        best = max((p for p in phases if p.name in ("search", "finetune")), key=lambda p: p.best_val)
        d, continuing = best.depth, best == phases[-1] and not best.converged
        if best != phases[-1]:
            net.load_state_at(d, weights[d])
            optimizer = sgd(net.parameters_at(d), optimizer.param_groups[0]["lr"], s)
        if d not in tuned:
            tuned[d] = fine_tune(d, best, optimizer, generator, continuing)
    # fast: the answer trains on at a tenth of the peak LR to zero (validation still rises after a long look)
    phase = anneal_phase(d, tuned[d].best_val, s, per_epoch)
    if schedule and phase.budget and tuned[d].name != "anneal":  # not twice: a miss's anneal may have met it
        tuned[d] = top_up(d, phase)
    net.load_state_at(d, weights[d])  # a resumed run skipped the phase that left them in the net
    return Result(d, reached, tuned[d].best_val, finished(), weights, warm, macs, costs["params"], baseline)


def prepare(net: DepthNet, data: Data, s: Settings) -> dict[str, list[int]]:
    """Check the settings, place the net (device, memory format, compile), count every depth's params and MACs."""
    s.check(net.max_depth)
    torch.manual_seed(s.seed)
    net.to(data.training_device).eval()  # eval: batch-norm cannot count a batch of one in training mode
    costs = depth_costs(net, normalise(data.train[0][:1].to(data.training_device), data.mean, data.std))
    if s.channels_last:
        net.to(memory_format=torch.channels_last)
    if s.compile:
        for module in (net.stem, *net.blocks, *net.heads):
            module.compile()  # per module, so no recompilation for each depth
    return costs


def journaled(on_event: Callable[[dict], object] | None, resume: dict | None, s: Settings):
    """The search's journal of finished phases (record, weights), its `emit` (a checkpoint carries the journal)
    and `run(phase, train)`: train one phase (resuming: skip it if finished, or continue it), and journal it."""
    journal: list = []

    def emit(record: dict):
        if record["event"] == "checkpoint":
            record = {**record, "journal": journal, "index": len(journal), "settings": asdict(s)}
        return on_event(record) if on_event else None

    def run(phase: Phase, train: Callable[[dict | None], dict[str, Tensor]]) -> dict[str, Tensor]:
        i = len(journal)
        if resume and i < resume["index"]:
            record, state = resume["journal"][i]
            vars(phase).update(record)
        else:
            state = train(resume if resume and i == resume["index"] else None)
            emit({"event": "phase", **asdict(phase), "weights": state})
        journal.append((asdict(phase), state))
        return state
    return journal, emit, run


def full_depth_baseline(net: DepthNet, data: Data, s: Settings, macs: list[int], per_epoch: int, emit, run,
                        weights: dict) -> Phase:
    """Table I's full-depth row: the full network trained alone from the same initial weights with the same
    recipe (fast: the long look and the anneal the answer gets); not part of the search's cost."""
    _, stop, schedule = STRATEGIES[s.strategy]
    initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
    baseline = Phase("baseline", net.max_depth, s.peak_lr if schedule else s.lr)
    optimizer, generator = sgd(net.parameters_at(net.max_depth), baseline.lr, s), shuffler(s, baseline)
    weights["baseline"] = run(baseline, lambda live: train_phase(
        net, baseline, data, optimizer, s, macs[-1], generator, emit, stop if schedule else None, schedule, live))
    topup = anneal_phase(net.max_depth, baseline.best_val, s, per_epoch, name="baseline")
    if schedule and topup.budget:
        weights["baseline"] = run(topup, lambda live: anneal(net, topup, weights["baseline"], data, s, macs[-1],
                                                             emit, live))
        baseline = dataclasses.replace(
            baseline, best_val=topup.best_val, val_curve=baseline.val_curve + topup.val_curve,
            **{k: getattr(baseline, k) + getattr(topup, k) for k in ("epochs", "images", "flops", "seconds", "budget")})
    net.load_state_dict(initial)
    return baseline


# ----------------------------------------------------------------------------------------------
# checkpoint state: everything a phase needs to go on exactly as if never stopped


def snapshot(net: DepthNet, phase: Phase, optimizer: torch.optim.Optimizer, scheduler, generator: torch.Generator,
             best: dict[str, Tensor] | None) -> dict:
    """A `checkpoint` event's body."""
    return {"phase": asdict(phase), "net": net.state_dict(), "best": best, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "generator": generator.get_state(), "rng": torch.get_rng_state(), "position": None}


def restore(state: dict, net: DepthNet, phase: Phase, optimizer: torch.optim.Optimizer, scheduler,
            generator: torch.Generator) -> tuple[dict[str, Tensor] | None, dict | None]:
    """Put a `snapshot` back; returns the phase's best weights and where in its epoch it stopped."""
    vars(phase).update(state["phase"])
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["rng"])
    return state["best"], state["position"]


# ----------------------------------------------------------------------------------------------
# measurement: parameters, size, multiply-adds, latency (Table I)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_macs(model: Callable[[Tensor], Tensor], sample: Tensor) -> int:
    """Multiply-adds of one forward pass of one image (torch.utils.flop_counter, halved: the paper's fvcore
    counts a multiply-add as one FLOP, torch as two). Convolutions and linear layers only."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(sample)
    return counter.get_total_flops() // 2


def depth_costs(net: DepthNet, sample: Tensor) -> dict[str, list[int]]:
    """Parameters and forward multiply-adds per image of the extracted network at every depth 1..N (uncopied)."""
    net.eval()  # batch-norm cannot count a batch of one in training mode
    depths = range(1, net.max_depth + 1)
    return {"params": [count_params(nn.ModuleList(net.parts(d))) for d in depths],
            "macs": [forward_macs(lambda x, d=d: net(x, d), sample) for d in depths]}


# ----------------------------------------------------------------------------------------------
# save and load: safetensors weights + a JSON record, written atomically

CHECKPOINT = "checkpoint.safetensors"  # a run's resumable state, beside its finished files

def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write a temporary file, fsync, rename: a crash or a full disk never leaves half a file or loses the old one."""
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
    from safetensors import SafetensorError
    from safetensors.torch import save_file
    # safetensors refuses shared or non-contiguous storage: clone each tensor on the CPU
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}

    def write(name: str) -> None:
        save_file(tensors, name, metadata=text)
        with open(name, "r+b") as file:  # safetensors writes its header in hash order: sort it, same bytes each run
            size = int.from_bytes(file.read(8), "little")
            header = json.dumps(json.loads(file.read(size)), sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False).encode()
            file.seek(8)
            file.write(header.ljust(size) if len(header) <= size else file.read(0))
    try:
        atomic_write(path, write)
    except SafetensorError as error:  # its I/O errors (a full disk) are OSErrors to every caller
        message = str(error).replace("\n", " ")  # "… I/O error: File too large (os error 27)"
        code = message.rpartition("(os error ")[2].rstrip(")")
        raise OSError(int(code) if code.isdigit() else None, message) from None


def save_json(path: Path, record: dict) -> None:
    atomic_write(path, lambda name: Path(name).write_text(json.dumps(record, indent=2) + "\n"))


def save(model: Extracted, out_dir: str | Path, *, arch: str, depth: int, num_classes: int, in_chans: int,
         image_size: int, mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), **record) -> Path:
    """Write what `load` reads back, atomically: odn.safetensors (the weights) and odn.json (`arch`, the name
    `load` builds again; the input normalisation `mean`/`std`; any further keyword). Returns the folder."""
    (out_dir := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    record = {"arch": arch, "depth": depth, "num_classes": num_classes, "in_chans": in_chans,
              "image_size": image_size, "mean": list(mean), "std": list(std), **record}
    header = {k: record[k] for k in ("arch", "data", "depth", "max_depth", "num_classes", "in_chans", "image_size",
                                     "mean", "std", "test_accuracy") if k in record}
    save_weights(out_dir / "odn.safetensors", model.state_dict(), header)
    save_json(out_dir / "odn.json", record)
    return out_dir


def load(out_dir: str | Path, build: Callable[..., DepthPartitionable] | None = None) -> Extracted:
    """Rebuild the extracted network saved in `out_dir` (odn.json + odn.safetensors), in eval mode; `build(name,
    num_classes=, in_chans=, image_size=)` makes the architecture (default: the registry in archs/, `build`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    if not (out_dir / "odn.json").exists() and (out_dir / CHECKPOINT).exists():
        raise ValueError(f"cannot load a network from {out_dir}: it holds an unfinished run (no odn.json yet); "
                         "finish it with --resume first")

    def read(name: str, how: Callable[[Path], object]):
        try:
            return how(out_dir / name)
        except (OSError, ValueError, SafetensorError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(f"cannot load a network from {out_dir}: {name}: {reason}") from None

    record = read("odn.json", lambda f: json.loads(f.read_text()))
    state = read("odn.safetensors", lambda f: load_file(str(f)))
    try:
        make = build or sibling("archs").build
        net = DepthNet(make(record["arch"], num_classes=record["num_classes"], in_chans=record["in_chans"],
                             image_size=record["image_size"]), record["num_classes"])
        model = extract(net, record["depth"])
    except KeyError as error:
        raise ValueError(f"cannot load a network from {out_dir}: odn.json lacks {error}") from None
    except ImportError as error:
        raise ValueError(f"cannot load a network from {out_dir}: {error}") from None
    except (LookupError, TypeError, ValueError) as error:
        raise ValueError(f"cannot load a network from {out_dir}: odn.json: {str(error).strip(chr(34) + chr(39))}") \
            from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:  # torch lists every missing, unexpected and misshapen tensor: say the first
        problem = " ".join(str(error).split("\n")[1].split())[:200]
        raise ValueError(f"cannot load a network from {out_dir}: odn.safetensors does not fit the network in "
                         f"odn.json ({problem})") from None
    return model.eval()


def sibling(name: str):
    """archs/ or data.py from beside this file, imported under a private name (odn_archs, odn_data), so
    that a user's own `archs` or `data` module neither hides them nor is hidden by them."""
    if f"odn_{name}" in sys.modules:
        return sys.modules[f"odn_{name}"]
    folder = Path(__file__).resolve().with_name(name)  # a package (archs/) or a module (data.py); a plain folder
    file = folder / "__init__.py" if (folder / "__init__.py").is_file() else folder.with_suffix(".py")  # ./data too
    if not file.is_file():
        raise ModuleNotFoundError(f"no {name} beside odn.py in {folder.parent} (copied alone, odn.load needs your "
                                  "own build=)")
    spec = importlib.util.spec_from_file_location(f"odn_{name}", file, submodule_search_locations=[str(folder)]
                                                  if file.name == "__init__.py" else None)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # plugins import it relatively
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


def build(name: str, *, num_classes: int, in_chans: int, image_size: int, **kw) -> DepthPartitionable:
    """The architecture registered as `name` in archs/, cut into blocks (needs timm)."""
    return sibling("archs").build(name, num_classes=num_classes, in_chans=in_chans, image_size=image_size, **kw)


if __name__ == "__main__":
    try:
        import odn_cli
    except ImportError as missing:  # copied alone, odn.py is the library; the command line is odn_cli.py
        sys.exit(f"odn.py: the command line needs odn_cli.py beside it and its packages ({missing}); alone, "
                 "odn.py is a library: import odn, then odn.search, odn.extract, odn.save")
    odn_cli.main()
