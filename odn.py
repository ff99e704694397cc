"""odn: Optimally Deep Networks — train a CNN only as deep as the data set needs.

Progressive depth expansion (Optimally Deep Networks, §III): split a network into blocks, give
every depth its own head, warm up all depths at once, then train the shallowest depth until it
converges and add one block at a time until the target accuracy is met. The first depth that
meets it is fine-tuned and extracted as a standalone, much smaller network.

    python odn.py                                            # offline default: ResNet-18 on 8×8 digits
    python odn.py --arch resnet18 --data mnist --target 0.99
    python odn.py --arch resnet34 --data fashion_mnist --target 0.935 --out runs/fashion

Used as a library, this file needs only torch: give `search` any `DepthPartitionable` network
and your own tensors (see test_odn.py::test_copied_file_works_alone).

Measured (`python odn.py`, 2 CPU cores, 2026-11-24): ResNet-18 on 8×8 digits, target 98 % → depth 2/8,
149,322 parameters (98.7 % fewer than full depth), test 98.33 %; the search cost 4.06 TFLOP in 49 s.
"""
from __future__ import annotations

import copy
import json
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
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


def normalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    shape = (1, -1, 1, 1) if x.dim() == 4 else (-1,)
    return (x - x.new_tensor(mean).view(shape)) / x.new_tensor(std).view(shape)


def batches(x: Tensor, y: Tensor, batch_size: int, data: Data, generator: torch.Generator | None = None,
            memory_format: torch.memory_format = torch.contiguous_format):
    """Yield normalised (x, y) batches; shuffled when a generator is given."""
    n = len(x)
    order = torch.randperm(n, generator=generator).to(x.device) if generator is not None else None
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        xb, yb = normalise(x[index], data.mean, data.std), y[index]
        if generator is not None and len(yb) < 2:
            break  # batch-norm cannot train on a single image
        if generator is not None and data.augment is not None:
            xb = data.augment(xb, generator)
        yield (xb.contiguous(memory_format=memory_format) if xb.dim() == 4 else xb), yb


@torch.inference_mode()
def accuracy(model: Callable[[Tensor], Tensor], split: tuple[Tensor, Tensor], data: Data,
             batch_size: int = 1000) -> float | list[float]:
    """Exact fraction correct (the reference rounded to 0.1 pt during the search).

    A model that returns stacked logits of several heads (heads, batch, classes) gets one per head.
    """
    x, y = split
    correct = 0
    for xb, yb in batches(x, y, batch_size, data):
        correct = correct + (model(xb).argmax(-1) == yb).sum(-1)
    return (correct.double() / len(y)).tolist()


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the hardware has it (CPUs, Ampere+ GPUs); fp16 (with loss scaling) on older GPUs."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def train_epoch(loss_fn: Callable[[Tensor, Tensor], Tensor], optimizer: torch.optim.Optimizer,
                data: Data, s: Settings, generator: torch.Generator,
                on_batch: Callable[[int], None] | None = None) -> tuple[float, int]:
    """One pass over the training split; returns (mean loss, images seen). One host sync per epoch."""
    device = data.train[0].device
    dtype = amp_dtype(device) if s.amp else torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    total, images = torch.zeros((), device=device), 0
    for xb, yb in batches(*data.train, s.batch_size, data, generator, memory_format):
        with torch.autocast(device.type, dtype=dtype, enabled=s.amp):
            loss = loss_fn(xb, yb)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += loss.detach().float() * len(yb)
        images += len(yb)
        if on_batch:
            on_batch(len(yb))
    return total.item() / max(images, 1), images


@dataclass
class Settings:
    """Every protocol number, defaulting to the paper's (DESIGN.md §1)."""
    target: float = 0.98
    strategy: str = "paper"
    warmup_epochs: int = 3
    warmup_lr: float = 0.001
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
    baseline: bool = False  # also train the full depth from the same initial weights (Table I's full row)
    seed: int = 0
    amp: bool = False  # bf16 autocast (fp16 + loss scaling where bf16 is missing)
    channels_last: bool = False
    compile: bool = False

    def check(self, blocks: int) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"--target must be in (0, 1], got {self.target}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if not 1 <= self.start_depth <= (self.max_depth or blocks) <= blocks:
            raise ValueError(f"need 1 <= --start-depth <= --max-depth <= {blocks}")
        if min(self.patience, self.lr_patience, self.batch_size) < 1 or self.lr <= 0:
            raise ValueError("--patience, --lr-patience, --batch-size and --lr must be positive")


@dataclass
class Phase:
    """One phase of the run and what it cost; serialisable, so a run can be recorded and resumed."""
    name: str  # warmup | search | finetune | baseline
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

    @property
    def cost(self) -> dict[str, float]:
        return {k: sum(getattr(p, k) for p in self.phases) for k in ("epochs", "images", "flops", "seconds")}


def sgd(params, lr: float, s: Settings) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)


def warmup(net: DepthNet, data: Data, s: Settings, depth: int, macs: list[int], generator: torch.Generator,
           emit: Callable[[dict], None]) -> Phase:
    """§III-B: a few epochs at every depth at once — summed loss over all heads, one step per batch."""
    phase = Phase("warmup", depth, s.warmup_lr)
    modules = [net.stem, *net.blocks[:depth], *net.heads[:depth]]
    optimizer = sgd([p for m in modules for p in m.parameters()], s.warmup_lr, s)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(s.warmup_epochs, 1))
    loss_fn = lambda x, y: sum(F.cross_entropy(logits, y) for logits in net.forward_all(x, depth))
    for epoch in range(s.warmup_epochs):
        start = time.perf_counter()
        net.train()
        loss, images = train_epoch(loss_fn, optimizer, data, s, generator,
                                   lambda n: emit({"event": "batch", "images": n}))
        lr = optimizer.param_groups[0]["lr"]
        schedule.step()
        net.eval()
        val = accuracy(lambda x: torch.stack(net.forward_all(x, depth)), data.val, data)  # every head, one pass
        # one pass through every block feeds every head: the cost of one full-depth forward
        account(phase, images, macs[depth - 1], time.perf_counter() - start)
        phase.best_val = max(phase.best_val, max(val))
        emit({"event": "epoch", "phase": "warmup", "depth": depth, "epoch": epoch + 1, "loss": loss,
              "lr": lr, "val_acc": max(val), "val_by_depth": val})
    return phase


def account(phase: Phase, images: int, macs: int, seconds: float) -> None:
    phase.epochs += 1
    phase.images += images
    phase.flops += 3.0 * macs * images  # forward + backward ≈ 3 forward passes
    phase.seconds += seconds


def train_phase(net: DepthNet, phase: Phase, data: Data, optimizer: torch.optim.Optimizer, s: Settings,
                macs: int, generator: torch.Generator, emit: Callable[[dict], None],
                stop: Callable[[Phase, Settings], bool] | None = None) -> dict[str, Tensor]:
    """Train at one depth until `stop` (default: the plateau rule's convergence); returns the best weights."""
    d, stop = phase.depth, stop or converged
    best = net.state_at(d)
    loss_fn = lambda x, y: F.cross_entropy(net(x, d), y)
    while not stop(phase, s):
        start = time.perf_counter()
        net.train()
        loss, images = train_epoch(loss_fn, optimizer, data, s, generator,
                                   lambda n: emit({"event": "batch", "images": n}))
        net.eval()
        val = accuracy(lambda x: net(x, d), data.val, data)
        account(phase, images, macs, time.perf_counter() - start)
        improved, decay = plateau_step(phase, val, s)
        if improved:
            best = net.state_at(d)
        lr = optimizer.param_groups[0]["lr"]
        if decay:
            for group in optimizer.param_groups:
                group["lr"] *= s.lr_decay
        emit({"event": "epoch", "phase": phase.name, "depth": d, "epoch": phase.epochs, "loss": loss, "lr": lr,
              "val_acc": val, "best_val": phase.best_val, "since_best": phase.since_best})
    net.load_state_at(d, best)
    return best


# a strategy is two plain functions: `start` prepares the network for a depth and returns the LR
# to begin with; `stop` says after each epoch whether the phase is over


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


STRATEGIES: dict[str, tuple[Callable[..., float], Callable[[Phase, Settings], bool]]] = {
    "paper": (restart_from_warmup, converged),
    "early": (restart_from_warmup, decided),
    "carry": (keep_converged, decided),
}


def shuffler(s: Settings, phase: Phase) -> torch.Generator:
    """Each phase shuffles from its own seed, so a depth sees the same batches however long earlier
    depths ran: `early` then replays `paper`'s epochs exactly and only stops them sooner."""
    return torch.Generator().manual_seed(zlib.crc32(f"{s.seed}/{phase.name}/{phase.depth}".encode()))


def search(net: DepthNet, data: Data, s: Settings, on_event: Callable[[dict], None] | None = None) -> Result:
    """Find the shallowest depth of `net` whose validation accuracy reaches `s.target` (Algorithm 1).

    Warms up every depth, trains depth by depth until the target is met, fine-tunes that depth and
    leaves its best-validation weights in `net`. Events (one per batch, per epoch, per finished
    phase) go to `on_event`; the function itself prints and writes nothing.
    """
    s.check(net.max_depth)
    emit = on_event or (lambda record: None)
    start, stop = STRATEGIES[s.strategy]
    torch.manual_seed(s.seed)
    last = s.max_depth or net.max_depth
    net.to(data.train[0].device).eval()  # eval: batch-norm cannot count a batch of one in training mode
    sample = normalise(data.train[0][:1], data.mean, data.std)
    macs = [forward_macs(lambda x, d=d: net(x, d), sample) for d in range(1, net.max_depth + 1)]
    if s.channels_last:
        net.to(memory_format=torch.channels_last)
    if s.compile:
        for module in (net.stem, *net.blocks, *net.heads):
            module.compile()  # per module, so no recompilation for each depth
    phases, weights = [], {}

    def finish(phase: Phase, state: dict[str, Tensor]) -> Phase:
        emit({"event": "phase", **asdict(phase), "weights": state})
        return phase

    baseline = None
    if s.baseline:  # Table I's full-depth row: the full network trained alone, same rule, same start
        initial = {k: v.detach().clone() for k, v in net.state_dict().items()}
        phase = Phase("baseline", net.max_depth, s.lr)
        optimizer = sgd(net.parameters_at(net.max_depth), s.lr, s)
        baseline = finish(phase, train_phase(net, phase, data, optimizer, s, macs[-1], shuffler(s, phase), emit))
        weights["baseline"] = net.state_at(net.max_depth)
        net.load_state_dict(initial)

    # §III-B: warm up all depths, keep the weights for every expansion
    phase = warmup(net, data, s, last, macs, shuffler(s, Phase("warmup", last, s.warmup_lr)), emit)
    warm = {k: v.detach().clone() for k, v in net.state_dict().items()}
    phases.append(finish(phase, warm))

    # §III-C: train the shallowest depth until it stops; below target → one more block
    optimizer, reached = None, False
    for d in range(s.start_depth, last + 1):
        lr = start(net, d, d == s.start_depth, warm, s)
        optimizer = sgd(net.parameters_at(d), lr, s)
        phase = Phase("search", d, lr)
        generator = shuffler(s, phase)
        weights[d] = train_phase(net, phase, data, optimizer, s, macs[d - 1], generator, emit, stop)
        phases.append(finish(phase, weights[d]))
        if phase.best_val >= s.target - s.tolerance:
            reached = True
            break

    # §III-D: fine-tune the optimal depth (or the best one tried) with the same optimizer. A phase
    # stopped before it converged (early, carry) is *continued* — same batches, optimizer and
    # plateau counters — so the depth ends trained exactly as the paper's search phase trains it.
    searched = [p for p in phases if p.name == "search"]
    best = searched[-1] if reached else max(searched, key=lambda p: p.best_val)
    if best is not searched[-1]:
        net.load_state_at(best.depth, weights[best.depth])
        optimizer = sgd(net.parameters_at(best.depth), optimizer.param_groups[0]["lr"], s)
    continuing = best is searched[-1] and not best.converged
    phase = Phase("finetune", best.depth, optimizer.param_groups[0]["lr"], best_val=best.best_val,
                  since_best=best.since_best if continuing else 0)
    generator = generator if continuing else shuffler(s, phase)
    weights[best.depth] = train_phase(net, phase, data, optimizer, s, macs[best.depth - 1], generator, emit, stop)
    phases.append(finish(phase, weights[best.depth]))
    return Result(best.depth, reached, phase.best_val, phases, weights, warm, macs, baseline)


# ----------------------------------------------------------------------------------------------
# measurement: parameters, size, multiply-adds, latency (Table I)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def size_mb(params: int) -> float:
    """fp32 size in MB (2^20 bytes) — the README compares this convention with the paper's."""
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
    model.eval()
    x = sample.float()
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= 3:  # skip warm-up iterations
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def report_rows(net: DepthNet, result: Result, data: Data) -> list[dict]:
    """Table I: one row per depth trained, then the full depth (trained alone with --baseline)."""
    full_params = count_params(extract(net, net.max_depth))
    sample = normalise(data.train[0][:1], data.mean, data.std)
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
    """Write through a temporary name and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    write(str(temporary))
    os.replace(temporary, path)


def save_weights(path: Path, state: dict[str, Tensor], metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage: clone each tensor on the CPU
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda name: save_file(tensors, name, metadata=text))


def save_json(path: Path, record: dict) -> None:
    atomic_write(path, lambda name: Path(name).write_text(json.dumps(record, indent=2) + "\n"))


def load(out_dir: str | Path, build: Callable[..., DepthPartitionable] | None = None) -> Extracted:
    """Rebuild the extracted network saved in `out_dir` (odn.json + odn.safetensors), in eval mode.

    `build(name, num_classes=, in_chans=, image_size=)` makes the architecture; by default the
    registry in archs/ does.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    try:
        record = json.loads((out_dir / "odn.json").read_text())
        state = load_file(str(out_dir / "odn.safetensors"))
    except (OSError, ValueError, SafetensorError) as error:
        raise ValueError(f"cannot load a network from {out_dir}: {error}") from None
    if build is None:
        import archs
        build = archs.build
    net = DepthNet(build(record["arch"], num_classes=record["num_classes"], in_chans=record["in_chans"],
                         image_size=record["image_size"]), record["num_classes"])
    model = extract(net, record["depth"])
    model.load_state_dict(state)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# command line: parse, validate, call the core, report with rich, write files


HELP = {
    "arch": "architecture, a name registered in archs/ (see README)",
    "data": "data set: digits (offline default), mnist, fashion_mnist, emnist, svhn, cifar10, cifar100, stl10, "
            "or folder:<path> (PATH/train/<class>/<image>, optional val/ and test/; see README)",
    "target": "target validation accuracy in (0, 1]",
    "strategy": "paper (the reference protocol), early (stop a depth once its outcome is known) or "
                "carry (early, and keep the converged weights when a block is added)",
    "warmup_epochs": "epochs of all-depth warm-up (§III-B)",
    "warmup_lr": "warm-up learning rate (cosine-annealed)",
    "lr": "search learning rate; each expansion starts at half of it",
    "batch_size": "training batch size",
    "patience": "epochs without a new best validation accuracy that mean converged",
    "lr_patience": "multiply the LR by --lr-decay after every this many epochs without a new best",
    "lr_decay": "LR factor of the plateau rule",
    "start_depth": "first depth to train",
    "max_depth": "deepest depth to try (0 = all blocks)",
    "tolerance": "accept a depth whose best validation accuracy is ≥ target − tolerance",
    "max_epochs": "cap on the epochs of any one search or fine-tune phase (0 = none), for quick runs",
    "train_subset": "train on a seeded random subset of this many images (0 = all)",
    "seed": "random seed for weights and shuffling",
    "device": "auto, cpu or cuda",
    "data_dir": "data root (default: $ODN_DATA, else ./data)",
    "image_size": "resize every image to this many pixels square (0 = native size)",
    "augment": "random crop (+ flip where a mirror keeps the class) per training batch "
               "(default: on for the colour sets, off for grey ones and folders, as in the paper)",
    "out": "output folder (default: runs/<arch>-<data>)",
    "val_subset": "validate on the first this many validation images (0 = all), for quick runs",
    "reject_margin": "early/carry: reject a depth once a generous projection of its curve stays this far below "
                     "the target",
    "baseline": "also train the full depth alone with the same rule (Table I's full row, cost ratio)",
    "amp": "bf16 autocast (fp16 with loss scaling on GPUs without bf16)",
    "channels_last": "channels-last memory format (faster on some CPUs and GPUs: measure)",
    "compile": "torch.compile each block",
    "list_archs": "list every registered architecture: blocks, full-depth params and multiply-adds "
                  "(3 channels, 10 classes, --image-size or 32 px), then exit",
}


def cli(
    arch: str = "resnet18", data: str = "digits", target: float = 0.98, strategy: str = "paper",
    warmup_epochs: int = 3, warmup_lr: float = 0.001, lr: float = 0.01, batch_size: int = 128,
    patience: int = 23, lr_patience: int = 5, lr_decay: float = 0.6, start_depth: int = 1,
    max_depth: int = 0, tolerance: float = 0.0, max_epochs: int = 0, train_subset: int = 0,
    seed: int = 0, device: str = "auto", data_dir: str = "", out: str = "",
    image_size: int = 0, augment: bool | None = None,
    val_subset: int = 0, reject_margin: float = 0.005, baseline: bool = False, amp: bool = False,
    channels_last: bool = False, compile: bool = False, list_archs: bool = False,
) -> None:
    """Find the optimal depth of ARCH for DATA, fine-tune it, extract it and report Table I."""
    from rich.console import Console

    import archs
    import data as datasets

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 110))  # keep Table I readable in logs and pipes
    if list_archs:
        size = image_size or 32
        console.print(archs.table(archs.describe(archs.names(), size), size))
        return
    # every option named like a Settings field is that field: the CLI adds nothing of its own
    settings = Settings(**{k: v for k, v in locals().items() if k in Settings.__dataclass_fields__})
    if not 0 < target <= 1:
        fail(f"--target must be in (0, 1], got {target}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        fail(f"--device {device} is not available here; use --device cpu")
    try:
        dataset = datasets.load(data, data_dir or None, image_size=image_size)
        torch.manual_seed(seed)
        partition = archs.build(arch, num_classes=dataset.num_classes, in_chans=dataset.in_chans,
                                image_size=dataset.image_size)
        net = DepthNet(partition, dataset.num_classes)
        settings.check(net.max_depth)
    except (LookupError, ValueError, datasets.DataUnavailable) as error:
        fail(str(error).strip("'\""))
    train = dataset.train
    if train_subset:
        keep = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(seed))[:train_subset]
        train = (train[0][keep], train[1][keep])
    val = (dataset.val[0][:val_subset], dataset.val[1][:val_subset]) if val_subset else dataset.val
    to = lambda split: (split[0].to(device), split[1].to(device))
    augment = dataset.augment_by_default if augment is None else augment
    run_data = Data(to(train), to(val), to(dataset.test), dataset.mean, dataset.std,
                    dataset.augment if augment else None)
    # folder:/a/b/shapes → runs/<arch>-folder-shapes
    name = f"folder-{Path(data[len('folder:'):]).resolve().name}" if data.startswith("folder:") else data
    out_dir = Path(out or f"runs/{arch}-{name}")
    facts = {"arch": arch, "data": data, "num_classes": dataset.num_classes, "in_chans": dataset.in_chans,
             "image_size": dataset.image_size, "mean": list(dataset.mean), "std": list(dataset.std),
             "classes": dataset.classes, "augment": augment}
    console.print(f"[bold]odn[/] {arch} on {data}: {len(train[1]):,} train / {len(val[1]):,} val / "
                  f"{len(dataset.test[1]):,} test images, {net.max_depth} blocks, target {target:.2%}, "
                  f"strategy {strategy}, device {device} → {out_dir}")
    try:
        result = run_with_progress(net, run_data, settings, out_dir, facts, console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: finished phases are saved in {out_dir} "
                      "(warmup.safetensors, depth-*.safetensors, history.jsonl)")
        raise SystemExit(130)
    rows = report_rows(net, result, run_data)
    record = run_record(result, rows, settings, facts, net.max_depth, len(train[1]))
    model = extract(net, result.depth)
    save_weights(out_dir / "odn.safetensors", model.state_dict(),
                 {k: record[k] for k in ("arch", "data", "depth", "max_depth", "num_classes", "in_chans",
                                         "image_size", "mean", "std", "test_accuracy")})
    save_json(out_dir / "odn.json", record)
    console.print(report_table(rows, record))
    verdict = "reached" if result.target_reached else "[red]NOT reached[/] — best depth tried"
    console.print(f"target {target:.2%} {verdict}: depth {result.depth}/{net.max_depth}, "
                  f"test {record['test_accuracy']:.2%}; search cost {record['search_cost']['flops'] / 1e12:.2f} "
                  f"TFLOP, {record['search_cost']['seconds']:.0f} s. Saved {out_dir}/odn.safetensors")


def fail(message: str):
    import typer

    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def run_with_progress(net: DepthNet, data: Data, s: Settings, out_dir: Path, facts: dict, console) -> Result:
    """Run the search with a live rich progress bar; write each phase's weights as it finishes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    out_dir.mkdir(parents=True, exist_ok=True)
    history = (out_dir / "history.jsonl").open("w")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, transient=True) as progress, history:
        task = progress.add_task("warm-up", total=len(data.train[1]), status="")

        def on_event(record: dict) -> None:
            if record["event"] == "batch":
                progress.advance(task, record["images"])
                return
            if record["event"] == "epoch":
                history.write(json.dumps(record) + "\n")
                history.flush()
                since = f" best {record['best_val']:.4f} · {record['since_best']}/{s.patience} w/o gain" \
                    if "best_val" in record else ""
                progress.update(task, completed=0, description=f"{record['phase']} d={record['depth']} "
                                f"ep {record['epoch'] + 1}", status=f"lr {record['lr']:.2g} loss {record['loss']:.3f} "
                                f"val {record['val_acc']:.4f}{since}")
                return
            weights = record.pop("weights")
            progress.console.print(f"{record['name']:>8} depth {record['depth']}: best val {record['best_val']:.4f} "
                                   f"after {record['epochs']} epochs, {record['seconds']:.0f} s")
            meta = {**facts, "phase": record["name"], "depth": record["depth"]}
            if record["name"] in ("warmup", "baseline"):
                save_weights(out_dir / f"{record['name']}.safetensors", weights, meta)
            else:
                save_weights(out_dir / f"depth-{record['depth']}.safetensors", weights, meta)

        return search(net, data, s, on_event)


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
            "settings": asdict(s), "versions": versions}


def report_table(rows: list[dict], record: dict):
    """Table I as a rich table: a pure function of the measured rows."""
    from rich.table import Table

    table = Table(title=f"{record['arch']} on {record['data']} (FLOPs = multiply-adds per image)")
    for name in ("depth", "params", "size MB", "size −%", "MFLOPs", "latency ms", "epochs", "train TFLOP",
                 "val acc", "test acc"):
        table.add_column(name, justify="right")
    percent = lambda v: "—" if v is None else f"{v:.2%}"
    for r in rows:
        label = f"{r['depth']}/{r['max_depth']}" + {"search": "", "baseline": " full", "full": ""}[r["kind"]]
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
    app = typer.Typer(pretty_exceptions_show_locals=False, add_completion=False)
    app.command()(cli)
    app()


if __name__ == "__main__":
    main()
