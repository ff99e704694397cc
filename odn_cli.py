"""odn's application: the command line around odn.py's algorithm.

`python odn.py ...` (or the `odn` console script) hands over to `main` here. This module parses and checks
the options, chooses the speed settings on the machine at hand, applies budgets, runs `odn.search` with a
live progress line, writes each finished phase, a resumable checkpoint and the run's record, prints Table I
with rich, exports ONNX (optional extra `deploy`) and draws the search (optional extra `plot`). Under
torchrun it joins the job first. odn.py never imports this file, except to hand `__main__` over.
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
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
import typer
from torch import Tensor, nn

import odn
from odn import (CHECKPOINT, STRATEGIES, Data, DepthNet, Interrupted, Phase, Result, Settings, accuracy,
                 atomic_write, batches, extract, normalise, rank_and_world, save, save_json, save_weights,
                 schedule_epochs, steps_per_epoch, train_epoch, warmup_images)

# ----------------------------------------------------------------------------------------------
# speed: bf16 autocast and channels-last are timed on the machine at hand, once, and remembered


SPEED_MARGIN = 0.05  # another setting must be this much faster than plain fp32 to be chosen


def probe_depth(net: DepthNet, s: Settings) -> int:
    """The depth the speed probe times: two blocks past the first. The search's epochs are mostly deeper than its
    first, and the first block alone is a poor proxy: on an AMD EPYC, a ResNet-34 depth-1 timing kept bf16 without
    channels-last, and depths 2–3 then trained ≈ 1.4 × slower than other runs with it (BENCHMARKS, fifth session)."""
    return min(s.max_depth or net.max_depth, s.start_depth + 2)


def speed_key(net: DepthNet, data: Data, s: Settings, arch: str) -> str:
    """What a speed choice depends on: machine, device, threads, torch, architecture, the depth timed, image
    shape, batch."""
    device = data.training_device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    shape = "x".join(map(str, data.train[0].shape[1:]))
    return (f"{name} | {device.type} | {torch.get_num_threads()} threads | torch {torch.__version__} | {arch} "
            f"depth {probe_depth(net, s)} | {shape} | batch {s.batch_size}")


def speed_memory() -> Path:
    """Where the choices are remembered: $ODN_CACHE, else ~/.cache/odn (one JSON file per user)."""
    return Path(os.environ.get("ODN_CACHE") or Path.home() / ".cache" / "odn") / "speed.json"


def remembered_speed(net: DepthNet, data: Data, s: Settings, arch: str, amp: bool | None,
                     channels_last: bool | None, time_one: Callable[[bool, bool], float] | None = None) -> dict:
    """The speed settings for this run: the ones given; else the choice remembered for this machine,
    network, image shape and batch size; else `choose_speed`'s, remembered from then on.

    Remembered so that the same command gives the same network every time: a fresh timing of a near tie can
    flip with the load on the machine, and bf16 trains other weights than fp32. Delete the file to time again.
    """
    key, path = speed_key(net, data, s, arch), speed_memory()
    if amp is not None and (channels_last is not None or data.train[0].dim() != 4):  # nothing left to choose
        return {"amp": amp, "channels_last": bool(channels_last), "source": "given", "key": key, "file": str(path),
                "seconds_per_image": {}}
    try:
        memory = json.loads(path.read_text())
    except (OSError, ValueError):
        memory = {}
    known = memory.get(key)
    if isinstance(known, dict) and {"amp", "channels_last"} <= set(known):
        chosen = {"amp": known["amp"] if amp is None else amp,
                  "channels_last": known["channels_last"] if channels_last is None else channels_last}
        return {**chosen, "source": "remembered", "key": key, "file": str(path),
                "seconds_per_image": known.get("seconds_per_image", {})}
    chosen_amp, chosen_format, timings = choose_speed(net, data, s, amp, channels_last, time_one)
    record = {"amp": chosen_amp, "channels_last": chosen_format, "seconds_per_image": timings}
    if amp is None and channels_last is None:  # only a whole choice is worth remembering
        try:
            atomic_write(path, lambda name: Path(name).write_text(json.dumps({**memory, key: record}, indent=1)))
        except OSError:
            pass  # a read-only home: the choice is still recorded in odn.json
    return {**record, "source": "timed", "key": key, "file": str(path)}


def choose_speed(net: DepthNet, data: Data, s: Settings, amp: bool | None, channels_last: bool | None,
                 time_one: Callable[[bool, bool], float] | None = None, rounds: int = 3) -> tuple[bool, bool, dict]:
    """Time a few training steps with and without bf16 autocast and channels-last; keep the fastest.

    bf16 can be 2× faster on one CPU and 10× slower on another; channels-last flips likewise. Settings
    already given (not None) are kept. Each setting keeps its best of `rounds` timings, taken in turn (a
    single timing of a near tie is noise); one 1.5× slower than the best after a round is not timed again.
    Plain fp32 stays unless another setting is `SPEED_MARGIN` faster: a near tie then never flips.
    """
    amps = [False, True] if amp is None else [amp]
    formats = [False, True] if channels_last is None and data.train[0].dim() == 4 else [bool(channels_last)]
    time_one = time_one or (lambda a, c: time_training_steps(net, data, s, probe_depth(net, s), a, c))
    timings = {(a, c): [] for a in amps for c in formats}
    for _ in range(rounds if len(timings) > 1 else 1):
        best = min((min(seen) for seen in timings.values() if seen), default=math.inf)
        for setting, seen in timings.items():
            if not seen or min(seen) <= 1.5 * best:
                seen.append(time_one(*setting))
    fastest = min(timings, key=lambda setting: min(timings[setting]))
    plain = (amps[0], formats[0])
    if min(timings[fastest]) > (1 - SPEED_MARGIN) * min(timings[plain]):
        fastest = plain
    return *fastest, {f"amp={a} channels_last={c}": min(seen) for (a, c), seen in timings.items()}


def time_training_steps(net: DepthNet, data: Data, s: Settings, depth: int, amp: bool, channels_last: bool,
                        steps: int = 3) -> float:
    """Seconds per image of `steps` training steps at `depth` on a copy (the net is left untouched), at the
    training batch size: kernels are chosen per shape, so smaller probe batches mislead."""
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
    train_epoch(loss_fn, optimizer, probe(images), trial, generator, alone=True)  # allocation, kernel choice
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    _, seen = train_epoch(loss_fn, optimizer, probe(images * steps), trial, generator, alone=True)
    sync()
    return (time.perf_counter() - start) / max(seen, 1)


def time_depths(net: DepthNet, data: Data, s: Settings, amp: bool, channels_last: bool, rounds: int = 3) -> dict:
    """Seconds per image of a training step at the first depth and at the probe's, with the settings chosen, each the
    best of `rounds` taken in turn: how an epoch's time grows with depth, for the time left (`epoch_costs`)."""
    depths = sorted({s.start_depth, probe_depth(net, s)})
    best = {d: math.inf for d in depths}
    for _ in range(rounds if len(depths) > 1 else 0):
        for d in depths:
            best[d] = min(best[d], time_training_steps(net, data, s, d, amp, channels_last))
    return {str(d): t for d, t in best.items() if t < math.inf}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU as `lscpu` names it, with its family, model and the vector unit torch's kernels use: speed settings
    and timings depend on them, and one name ("AMD EPYC") covers CPUs where bf16 trains 2× faster and 10× slower."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    try:
        first = cpuinfo.read_text().split("\n\n")[0].splitlines()
        info = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first)}
        name, detail = info["model name"], [f"family {info.get('cpu family', '?')} model {info.get('model', '?')}"]
    except (OSError, KeyError):
        import platform
        name, detail = platform.processor() or platform.machine(), []
    detail += [capability] if capability else []
    return f"{name} ({', '.join(detail)})" if detail else name


def from_rank_0(value):
    """Rank 0's `value` on every rank: a choice measured per process (speed, latency) must not diverge."""
    if rank_and_world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------------------
# budgets and measurement: what a depth costs where it is deployed


def within_budget(net: DepthNet, costs: dict, sample: Tensor, start_depth: int = 1, max_params: int = 0,
                  max_macs: int = 0, max_latency_ms: float = 0.0) -> dict | None:
    """The deepest depth whose parameters, multiply-adds and batch-1 latency all fit the budgets (§III-C's
    expansion stops below it), with every depth's figures; None without a budget."""
    if not (max_params or max_macs or max_latency_ms):
        return None
    facts = {**costs, "latency_ms": [latency_ms(extract(net, d), sample) if max_latency_ms else None
                                     for d in range(1, net.max_depth + 1)]}
    fits = [(not max_params or p <= max_params) and (not max_macs or m <= max_macs) and
            (not max_latency_ms or t <= max_latency_ms)
            for p, m, t in zip(facts["params"], facts["macs"], facts["latency_ms"])]
    if not fits[start_depth - 1]:
        d = start_depth - 1
        raise ValueError(f"depth {start_depth} is already over the budget ({facts['params'][d]:,} params, "
                         f"{facts['macs'][d]:,} multiply-adds"
                         + (f", {facts['latency_ms'][d]:.2f} ms" if max_latency_ms else "")
                         + "); raise --max-params / --max-macs / --max-latency-ms")
    depth = start_depth
    while depth < net.max_depth and fits[depth]:
        depth += 1
    return {**facts, "depth": depth}


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


# ----------------------------------------------------------------------------------------------
# the report: Table I, the record in odn.json


def report_rows(net: DepthNet, result: Result, data: Data) -> list[dict]:
    """Table I: one row per depth trained, then the full depth (trained alone with --baseline)."""
    full_params = result.params[-1]
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
        params = result.params[d - 1]
        table.append({
            "depth": d, "max_depth": net.max_depth, "kind": key if isinstance(key, str) else "search",
            "params": params, "size_mb": size_mb(params), "size_reduction": 1 - params / full_params,
            "macs": result.macs[d - 1], "latency_ms": latency_ms(model.eval(), sample),
            "val_accuracy": max(p.best_val for p in phases) if phases else None,
            "test_accuracy": accuracy(model, data.test, data) if phases and data.test is not None else None,
            "epochs": sum(p.epochs for p in phases), "train_flops": sum(p.flops for p in phases),
            "chosen": key == result.depth})
    return table


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
            "budget": facts.get("budget"),
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
            "settings": asdict(s), "by_depth": {"macs": result.macs, "params": result.params},
            "speed": facts.get("speed"), "cpu": cpu_model(), "threads": torch.get_num_threads(), "versions": versions}


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




def size_mb(params: int) -> float:
    return params * 4 / 2**20  # fp32, in MB of 2^20 bytes


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def search_plan(s: Settings, start: dict, images: int, timed: dict | None = None) -> dict | None:
    """`fast`'s schedule ahead, from the search's `start` event: the most epochs each depth can still take, and an
    epoch's cost at each depth for the time left (`epoch_costs`, from the speed probe's `timed` depths)."""
    if STRATEGIES[s.strategy][2] is None:
        return None  # the plateau rule's phases have no length known in advance
    per_epoch = steps_per_epoch(images, s.batch_size, rank_and_world()[1])
    epochs = lambda name: schedule_epochs(Phase(name, 1, 0), s, per_epoch)
    return {"macs": start["macs"], "epoch_cost": epoch_costs(start["macs"], timed),
            "params": start["params"], "start": s.start_depth, "last": start["last"],
            "goal": s.target - s.tolerance, "warmup_epochs": s.warmup_epochs, "warmup_share": warmup_images(s, images) / images,
            "short": epochs("search"), "long": epochs("finetune"), "anneal": epochs("anneal"),
            "anneal_gain": s.anneal_gain ** (epochs("anneal") / s.anneal_epochs) if epochs("anneal") else 1.0,
            "reach": s.reach, "reach_slack": s.reach_slack, "gain_prior": s.gain_prior,
            "relook": s.relook and epochs("search") > s.short_epochs}


def epoch_costs(macs: list, timed: dict | None) -> list:
    """An epoch's cost at each depth, in multiply-adds: its own plus a part that does not grow with depth (the data,
    per-layer and per-step overheads), read off the speed probe's seconds per image at two depths (`timed`,
    {depth: seconds}); without them, its multiply-adds alone. An epoch is not ∝ multiply-adds everywhere: on an
    AVX-512 EPYC in bf16, ResNet-34's depths 2 and 3 (2.0, 3.0 × depth 1's multiply-adds) took 1.4 and 2.1 × its
    time, where on an AVX2 EPYC in fp32 they took 1.90 and 2.77 × (BENCHMARKS, ninth session)."""
    (a, t_a), (b, t_b) = (sorted((int(d), t) for d, t in (timed or {}).items()) + [(0, 0.0)] * 2)[:2]
    if not a or not b or macs[b - 1] <= macs[a - 1] or t_b <= t_a:
        return list(macs)  # not timed at two depths, or a deeper depth timed no slower: noise
    per_mac = (t_b - t_a) / (macs[b - 1] - macs[a - 1])
    fixed = max(0.0, t_a / per_mac - macs[a - 1])
    return [m + fixed for m in macs]


def seconds_per_unit(plan: dict, epoch: dict) -> float:
    """Seconds a training epoch takes per unit of its depth's cost (`epoch_costs`), from the latest `epoch` event (a
    warm-up epoch is one pass at its depth, feeding every head, over the warm-up's share of the images)."""
    share = plan.get("warmup_share", 1.0) if epoch["phase"] == "warmup" else 1.0
    return epoch["seconds"] / (plan.get("epoch_cost", plan["macs"])[epoch["depth"] - 1] * share)


def search_left(plan: dict, epoch: dict) -> tuple[float, float]:
    """Seconds the search can still take (`fast`): at least (the depth in training now, or the first one
    after the warm-up, is the answer) and at most (every depth up to the last fails, each after its anneal), from
    a `plan` event and the latest `epoch` event: its measured epoch time, scaled by `epoch_costs` to the other depths."""
    work, d, short, long = plan.get("epoch_cost", plan["macs"]), epoch["depth"], plan["short"], plan["long"]  # an epoch per depth
    this_phase = (epoch["budget"] - epoch["epoch"]) * work[d - 1]
    anneal = plan.get("anneal", 0)
    deeper = (short + long + anneal) * sum(work[d:plan["last"]])  # every depth after this one, tried in full
    hit = epoch.get("best_val", 0.0) >= plan.get("goal", math.inf)
    if epoch["phase"] == "warmup":  # least: the first depth's short look meets the target, then its top-ups
        least = most = (plan["warmup_epochs"] - epoch["epoch"]) * work[d - 1] * plan.get("warmup_share", 1.0)
        least += (long + anneal) * work[plan["start"] - 1]
        most += (short + long + anneal) * sum(work[plan["start"] - 1:plan["last"]])
    elif epoch["phase"] == "anneal":  # the answer's, or a miss's (then deeper depths may follow)
        least = this_phase
        most = least if hit else least + deeper
    elif epoch["phase"] == "finetune":
        least = this_phase + anneal * work[d - 1]
        most = least if hit else least + deeper
    else:  # a short or second look: a hit goes on for the rest of a long look's passes; a near miss has a whole
        # long look, a promising second look a long look's passes beyond the short look
        relook = epoch["phase"] == "relook"
        least = this_phase + (long - (2 * short if relook else short) + anneal) * work[d - 1]
        most = this_phase + (long - (short if relook else 0) + anneal) * work[d - 1] + deeper
    per_mac = seconds_per_unit(plan, epoch)
    return least * per_mac, most * per_mac


def reading_exponent(short: Phase) -> float:
    """α to predict what a deeper depth will read, from `short`'s last epoch, where the one-cycle anneals and the
    error falls as fast as the depth lets it (e ∝ passes^−2α, second-last epoch to last); the search's own α
    (`odn.scaling_exponent`, first epoch to last) where the last epoch did not improve."""
    curve, n = short.val_curve, len(short.val_curve)
    if n > 1 and 1 - curve[-2] > 1 - curve[-1] > 0:
        return min(2.0, math.log((1 - curve[-2]) / (1 - curve[-1])) / math.log(n / (n - 1)) / 2)
    return odn.scaling_exponent(short)


RELOOK_PRIOR = 0.5  # a second look's error ÷ its short look's until one is measured (0.32–0.83 on bench's profiles)


def search_forecast(plan: dict, seen: dict, epoch: dict) -> float:
    """Seconds the search will most likely still take (`fast`): `fast`'s own rules replayed on the readings
    it has not made yet. Short-look errors follow a power of the parameters, e ∝ params^−α, through the latest
    depth read (α as `odn.scaling_exponent` takes it from the latest short look, as the search does to predict a
    depth within reach); a long look's error is its short look's × the gain measured
    (`gain_prior` before one is); on small data a second look's is its short look's × the ratio last measured
    (`RELOOK_PRIOR` before one is). `seen` holds the readings of finished phases, {"search" | "relook" |
    "finetune": {depth: accuracy}}, and the short looks' validation curves, {"curve": {depth: [accuracy, …]}}."""
    work, params, goal, last = plan.get("epoch_cost", plan["macs"]), plan["params"], 1 - plan["goal"], plan["last"]
    short, long, anneal = plan["short"], plan["long"], plan.get("anneal", 0)
    reach, slack = plan.get("reach", 2.0), plan.get("reach_slack", 1.3)
    looked, again, longs = (dict(seen.get(name, {})) for name in ("search", "relook", "finetune"))
    # a long look's gain, as `odn.search` measures it: not where the long look went on from a second look
    gains = [(1 - longs[k]) / (1 - looked[k]) for k in longs if k in looked and k not in again and looked[k] < 1]
    gain = min(gains) if gains else plan.get("gain_prior", 0.8)
    ratios = [(1 - again[k]) / (1 - looked[k]) for k in sorted(again) if k in looked and looked[k] < 1]
    ratio = ratios[-1] if ratios else RELOOK_PRIOR
    curves = {k: c for k, c in seen.get("curve", {}).items() if k in looked}  # short looks measured (and ended)
    latest = Phase("search", 1, 0, best_val=looked[max(curves)], val_curve=curves[max(curves)]) if curves else \
        Phase("search", 1, 0)
    alpha, reading_alpha = odn.scaling_exponent(latest), reading_exponent(latest)  # the search's; the readings'

    def short_error(depth: int, exponent: float | None = None) -> float:
        read = sorted(k for k in looked if k < depth and looked[k] < 1)
        if not read:  # nothing read yet: this depth's latest reading stands for its short look
            return 1 - epoch.get("val_acc", 0.0)
        exponent = reading_alpha if exponent is None else exponent
        return (1 - looked[read[-1]]) * (params[depth - 1] / params[read[-1] - 1]) ** -exponent

    def within_reach(error: float) -> bool:  # `odn.within_reach`
        return error <= reach * goal and error * gain <= slack * goal

    def after_relook(depth: int, error: float) -> float:  # what `odn.search` judges a second look by
        return odn.relook_error(1 - looked.get(depth, 1.0), error, 2 * short, long)

    # the phase in training now: what is left of it, and the reading it will end on (measured at its end)
    d, name, ended = epoch["depth"], epoch["phase"], epoch["epoch"] >= epoch["budget"]
    cost = (epoch["budget"] - epoch["epoch"]) * work[d - 1] * (plan.get("warmup_share", 1.0) if name == "warmup" else 1)
    measured, straight = 1 - epoch.get("best_val", 0.0), False
    if name == "anneal":
        return cost * seconds_per_unit(plan, epoch)
    if name == "warmup":
        stage, d = "next", plan["start"]
    elif name == "search":
        stage, error = "short", measured if ended else short_error(d)
        looked[d] = 1 - error
    elif name == "relook":
        stage, error = "relook", measured if ended else (1 - looked[d]) * ratio
    else:  # a long look (after a near miss or a promising second look), or the rest of one after a hit
        predicted = after_relook(d, 1 - again[d]) if d in again else \
            (1 - looked[d]) * gain if d in looked else short_error(d) * gain
        stage, error = "long", measured if ended else min(predicted, measured)
    while True:  # `odn.search`'s rules, phase by phase, on predicted readings
        if stage == "next":
            if d > last:
                return (cost + anneal * work[last - 1]) * seconds_per_unit(plan, epoch)
            if straight:  # the long look at once, after a narrow miss
                stage, error, cost = "long", short_error(d) * gain, cost + long * work[d - 1]
                continue
            error = 1 - looked[d] if d in looked else short_error(d)
            looked[d], stage, cost = 1 - error, "short", cost + short * work[d - 1]
        m = work[d - 1]
        if stage == "short":
            if error <= goal:  # a hit: the rest of a long look's passes, then the anneal
                return (cost + (long - short + anneal) * m) * seconds_per_unit(plan, epoch)
            if within_reach(error):  # a near miss: its long look
                stage, error, cost = "long", error * gain, cost + long * m
            elif plan.get("relook") and d not in again:  # small data: a second look from the first's weights
                stage, error, cost = "relook", error * ratio, cost + short * m
            else:  # rejected: a next depth predicted within reach gets its long look at once
                stage, d, straight = "next", d + 1, d < last and within_reach(short_error(d + 1, alpha))
            continue
        if stage == "relook":
            again[d] = 1 - error
            if error <= goal:
                return (cost + (long - 2 * short + anneal) * m) * seconds_per_unit(plan, epoch)
            if after_relook(d, error) <= slack * goal:  # promising: on for a long look's passes beyond the short look
                stage, error, cost = "long", after_relook(d, error), cost + (long - short) * m
            else:
                stage, d, straight = "next", d + 1, d < last and within_reach(short_error(d + 1, alpha))
            continue
        if error * plan.get("anneal_gain", 1.0) <= goal:  # a long look that meets the target, or that its anneal
            return (cost + anneal * m) * seconds_per_unit(plan, epoch)  # will lift to it: the anneal, the end
        stage, d, straight = "next", d + 1, error <= slack * goal


def evidence(resume: dict | None) -> dict:
    """The readings `search_forecast` starts from: none for a new run, a resumed run's finished phases."""
    seen: dict = {}
    for record, _ in (resume or {}).get("journal", []):
        remember(seen, record)
    return seen


def remember(seen: dict, record: dict) -> None:
    """A finished phase's reading (and a short look's curve) for `search_forecast`."""
    seen.setdefault(record["name"], {})[record["depth"]] = record["best_val"]
    if record["name"] == "search":
        seen.setdefault("curve", {})[record["depth"]] = list(record.get("val_curve", []))


def remember_epoch(seen: dict, record: dict) -> None:
    """A short look's curve as it grows, and its reading once its schedule has ended: the search decides on it
    then, before the phase is recorded, and so does the forecast."""
    if record["phase"] == "search":
        curve = seen.setdefault("curve", {}).setdefault(record["depth"], [])
        del curve[record["epoch"] - 1:]  # a resumed run trains an epoch again
        curve.append(record["val_acc"])
        if record.get("budget") and record["epoch"] >= record["budget"]:
            seen.setdefault("search", {})[record["depth"]] = record["best_val"]


def run_with_progress(net: DepthNet, data: Data, s: Settings, out_dir: Path, facts: dict, console,
                      resume: dict | None = None, stopping: Callable[[], bool] = lambda: False) -> Result:
    """Run the search with live progress; write each phase's weights as it finishes.

    On a terminal: a rich bar with the epoch's ETA. Otherwise (a log file, nohup, a batch job): one
    plain line per epoch, and one a minute inside long epochs, so a log is never silent for long.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if rank_and_world()[0]:  # another rank of a torchrun job: quiet, but it stops with the job
        return odn.search(net, data, s, lambda record: stopping() if record["event"] == "batch" else None, resume)
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
    warming = s.warmup_epochs and not (resume and resume.get("journal"))  # the first epoch is the warm-up's
    clock = {"epoch": time.perf_counter(), "said": time.perf_counter(), "seen": 0,
             "name": "warm-up" if warming else "search", "images": warmup_images(s, images) if warming else images}
    seen = evidence(resume)  # what the forecast of the time left reads from

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
                done = clock["seen"] / clock["images"]
                eta = (now - clock["epoch"]) * (1 - done) / max(done, 1e-9)
                console.print(f"  {clock['name']}: {done:.0%} of the epoch, {clock['seen'] / (now - clock['epoch']):.0f} "
                              f"img/s, epoch eta {duration(eta)}", highlight=False)
                clock["said"] = now
            return stopping()
        if record["event"] == "start":
            clock["plan"] = search_plan(s, record, len(data.train[1]), (facts.get("speed") or {}).get("by_depth"))
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
            remember_epoch(seen, record)
            if clock.get("plan") and record["phase"] in ("warmup", "search", "relook", "finetune", "anneal") and record.get("seconds"):
                least, most = search_left(clock["plan"], record)
                likely = min(max(search_forecast(clock["plan"], seen, record), least), most)
                phase_eta += f" · search {duration(least)} left" if least == most else \
                    f" · search ≈ {duration(likely)} left (≥ {duration(least)}, ≤ {duration(most)})"
            name = f"{record['phase']} d={record['depth']}"
            status = f"lr {record['lr']:.2g} loss {record['loss']:.3f} val {record['val_acc']:.4f}{since}{phase_eta}"
            if live:
                progress.update(task, completed=0, description=f"{name} ep {record['epoch'] + 1}", status=status)
            else:
                clock["line"] = f"{name} epoch {record['epoch']}: {status} · {seconds:.0f} s/epoch"
            clock.update(epoch=now, said=now, seen=0, name=f"{name} ep {record['epoch'] + 1}")
            return
        weights = record.pop("weights")
        remember(seen, record)
        clock["images"] = images
        console.print(f"{record['name']:>8} depth {record['depth']}: best val {record['best_val']:.4f} "
                      f"after {record['epochs']} epoch{'s' if record['epochs'] != 1 else ''}, "
                      f"{record['seconds']:.0f} s", highlight=False)
        clock.update(epoch=now, said=now, seen=0, name=record["name"])
        meta = {**facts, "phase": record["name"], "depth": record["depth"]}
        if record["name"] in ("warmup", "baseline"):
            save_weights(out_dir / f"{record['name']}.safetensors", weights, meta)
        else:
            save_weights(out_dir / f"depth-{record['depth']}.safetensors", weights, meta)

    with Progress(*columns, console=console, transient=True, disable=not live) as progress, history:
        task = progress.add_task("warm-up", total=images, status="")
        return odn.search(net, data, s, on_event, resume)


# ----------------------------------------------------------------------------------------------
# the run's files: checkpoints (safetensors + JSON, never pickle) and the output folder's checks


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
    # traced on two images: on one, torch.export may take the size-1 batch for a constant and then refuse the
    # dynamic axis (ConvNeXt-atto: "Invalid ranges [2:1]"); the axis still takes any batch, one image included
    two = sample[:1].float().expand(2, *sample.shape[1:]).contiguous()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates its steps
            program = torch.onnx.export(model, (two,), input_names=["image"],
                                        output_names=["logits"], dynamic_shapes={"x": {0: batch}}, dynamo=True,
                                        opset_version=18, verbose=False)
    except Exception as error:  # the exporter's own errors run to pages: one line, and the weights are kept
        cause = next((line.strip() for line in str(error).splitlines() if line.startswith("<class")), "")
        raise ValueError(f"torch.onnx could not export this network to {path.name} ({type(error).__name__}"
                         f"{': ' + cause if cause else ''}); the PyTorch weights are saved: load them with odn.load, "
                         "or try `python odn.py export RUN_DIR` with another torch") from None
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


# ----------------------------------------------------------------------------------------------
# pictures (optional extra: odn[plot]) and torchrun


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


# ----------------------------------------------------------------------------------------------
# the command line: parse and check, then call the core; subcommands plot, export, describe


RUN, DATA, SEARCH, FAST, PAPER, SPEED, BUDGETS, OUTPUT = ("run", "data", "search", "fast schedule",
                                                          "paper protocol", "speed", "budgets", "deploy / output")


def option(help: str, panel: str, *names: str):
    return typer.Option(*names, help=help, rich_help_panel=panel)


app = typer.Typer(pretty_exceptions_show_locals=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

# the options of one strategy only: the other strategy's are refused rather than silently ignored
PAPER_ONLY = ("lr", "patience")
FAST_ONLY = ("short_epochs", "long_epochs", "peak_lr", "anneal_epochs")


@app.callback(invoke_without_command=True)
def run(
    ctx: typer.Context,
    arch: Annotated[str, option("architecture, a name registered in archs/ (--list-archs lists them)", RUN)] = "resnet18",
    data: Annotated[str, option("data set: digits (offline default), mnist, fashion_mnist, emnist, svhn, cifar10, "
                                "cifar100, stl10, or folder:PATH (PATH/train/<class>/<image>, optional val/ and "
                                "test/; or PATH/<class>/<image>)", RUN)] = "digits",
    target: Annotated[float, option("target validation accuracy in (0, 1]", RUN)] = 0.98,
    out: Annotated[str, option("output folder (default: runs/<arch>-<data>)", RUN)] = "",
    seed: Annotated[int, option("random seed for weights and shuffling", RUN)] = 0,
    device: Annotated[str, option("auto, cpu or cuda", RUN)] = "auto",
    resume: Annotated[bool, option("continue the interrupted run in --out from its last checkpoint (same options)",
                                   RUN, "--resume")] = False,
    force: Annotated[bool, option("start over in an --out that already holds a run (finished or interrupted)",
                                  RUN, "--force")] = False,
    data_dir: Annotated[str, option("data root (default: $ODN_DATA, else ./data)", DATA)] = "",
    train_subset: Annotated[int, option("train on a seeded random subset of this many images (0 = all)", DATA)] = 0,
    val_subset: Annotated[int, option("validate on the first this many validation images (0 = all)", DATA)] = 0,
    image_size: Annotated[int, option("resize every image to this many pixels square (0 = native size)", DATA)] = 0,
    augment: Annotated[Optional[bool], option("random crop (+ flip where a mirror keeps the class) per training "
                                              "batch (default: on for the colour sets, off for grey ones and "
                                              "folders, as in the paper)", DATA)] = None,
    cache: Annotated[bool, option("decode the data set once into odn-cache/ beside it and memory-map it from then "
                                  "on (sets larger than memory); delete that folder to rebuild", DATA, "--cache")] = False,
    strict_images: Annotated[bool, option("folders: stop at an unreadable image instead of skipping it with a "
                                          "warning", DATA, "--strict-images")] = False,
    strategy: Annotated[str, option("fast (one-cycle schedules: a short look at every depth, a long one for "
                                    "depths within reach) or paper (the paper's exact protocol)", SEARCH)] = "fast",
    warmup_epochs: Annotated[Optional[int], option("epochs of all-depth warm-up (§III-B; fast 0: none, paper 3)",
                                                   SEARCH)] = None,
    start_depth: Annotated[int, option("first depth to train", SEARCH)] = 1,
    max_depth: Annotated[int, option("deepest depth to try (0 = all blocks)", SEARCH)] = 0,
    baseline: Annotated[bool, option("also train the full depth alone with the same recipe (Table I's full row "
                                     "and the cost ratio)", SEARCH, "--baseline")] = False,
    short_epochs: Annotated[int, option("epochs of the one-cycle look every depth gets (at least 100 steps)",
                                        FAST)] = 3,
    long_epochs: Annotated[int, option("epochs of the long look a near miss gets (its fine-tune)", FAST)] = 8,
    peak_lr: Annotated[float, option("peak learning rate of the one-cycle schedule (SGD, Nesterov momentum)",
                                     FAST)] = 0.2,
    anneal_epochs: Annotated[int, option("the chosen depth then trains on at --peak-lr / 10 falling to 0 until it "
                                         "has made --long-epochs + this many passes (0 = none)", FAST)] = 4,
    lr: Annotated[float, option("search learning rate; each expansion starts at half of it", PAPER)] = 0.01,
    patience: Annotated[int, option("epochs without a new best validation accuracy that mean converged (the LR "
                                    "× 0.6 after every 5)", PAPER)] = 23,
    amp: Annotated[Optional[bool], option("bf16 autocast (default: timed both ways once per machine, network and "
                                          "image shape, and remembered)", SPEED)] = None,
    channels_last: Annotated[Optional[bool], option("channels-last memory format (default: timed and remembered "
                                                    "like --amp)", SPEED)] = None,
    batch_size: Annotated[int, option("training batch size", SPEED)] = 128,
    max_params: Annotated[int, option("never train a depth with more parameters than this (0 = no budget)",
                                      BUDGETS)] = 0,
    max_macs: Annotated[int, option("never train a depth with more multiply-adds per image than this (0 = none)",
                                    BUDGETS)] = 0,
    max_latency_ms: Annotated[float, option("never train a depth slower than this at batch 1 on this device "
                                            "(0 = none)", BUDGETS)] = 0.0,
    int8: Annotated[bool, option("also write model.int8.onnx (onnxruntime static int8, calibrated on 512 training "
                                 "images)", OUTPUT, "--int8")] = False,
    list_archs: Annotated[bool, option("list every registered architecture, its block count and plugin file, then "
                                       "exit", OUTPUT, "--list-archs")] = False,
) -> None:
    """Find the optimal depth of ARCH for DATA, fine-tune it, extract it and report Table I.

    Subcommands: plot RUN_DIR (redraw a run's pictures), export RUN_DIR (ONNX for a finished run),
    describe ARCH (params, MB and multiply-adds of every depth).
    """
    if ctx.invoked_subcommand:
        return
    options = {k: v for k, v in locals().items() if k != "ctx"}
    console = make_console()
    if list_archs:
        return console.print(architecture_list(siblings()[1]))
    settings = check_options(options)
    datasets, archs = siblings()
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
               "image_size": image_size, "augment": augment, "device": device, **asdict(settings),
               "max_params": max_params, "max_macs": max_macs, "max_latency_ms": max_latency_ms}
    checkpoint = check_out_dir(out_dir, resume, force, command)  # on every rank: all fail alike, before joining
    try:
        dataset = datasets.load(data, data_dir or None, image_size=image_size, strict_images=strict_images,
                                cache=cache)
        torch.manual_seed(seed)
        net = DepthNet(archs.build(arch, num_classes=dataset.num_classes, in_chans=dataset.in_chans,
                                   image_size=dataset.image_size), dataset.num_classes)
        settings.check(net.max_depth)
    except (LookupError, ValueError, datasets.DataUnavailable) as error:
        fail(str(error).strip("'\""))
    for flag, wanted, split in (("train-subset", train_subset, dataset.train), ("val-subset", val_subset, dataset.val)):
        if wanted > len(split[1]):
            fail(f"--{flag} {wanted} is larger than the split ({len(split[1]):,} images); use at most that, or 0")
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
    state = None
    try:
        if checkpoint:
            state, started = read_checkpoint(checkpoint)
            speed = started.get("speed") or {k: state["settings"][k] for k in ("amp", "channels_last")}
            facts |= {"speed": speed, "budget": started.get("budget")}  # as the run started: its numbers need them
        else:
            facts |= prepare_run(net, run_data, settings, options, console)
    except ValueError as error:
        fail(str(error))
    speed, budget = facts["speed"], facts["budget"]
    settings = dataclasses.replace(settings, amp=speed["amp"], channels_last=speed["channels_last"],
                                   max_depth=min(settings.max_depth or net.max_depth,
                                                 budget["depth"] if budget else net.max_depth))
    result = search_with_signals(net, run_data, settings, out_dir, {**facts, "command": command}, console, state)
    rows = report_rows(net, result, run_data)  # every rank: test accuracy is counted across them
    if dist.is_initialized():
        dist.destroy_process_group()
    if rank:
        return
    record = run_record(result, rows, settings, facts, net.max_depth, len(train[1]))
    # a GPU run's seconds are the GPU's: "cpu" alone would name the wrong machine beside them
    record["device"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    model = extract(net, result.depth)
    save(model, out_dir, **record)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    console.print(report_table(rows, record))
    deploy_and_report(model, extract(net, net.max_depth), out_dir, run_data, record, console, int8)
    draw(out_dir, console)
    verdict = "reached" if result.target_reached else "[red]NOT reached[/] — best depth tried"
    if budget and not result.target_reached and budget["depth"] < net.max_depth:
        verdict = f"[red]not met within the budget[/] (depths ≤ {budget['depth']} fit it) — best depth within it"
    console.print(f"target {target:.2%} {verdict}: depth {result.depth}/{net.max_depth}, "
                  f"test {record['test_accuracy']:.2%}; search cost {record['search_cost']['flops'] / 1e12:.2f} "
                  f"TFLOP, {record['search_cost']['seconds']:.0f} s. The network: {out_dir}/odn.safetensors "
                  "(odn.load reads it back)", soft_wrap=True)
    written = ", ".join(sorted(p.name for p in out_dir.iterdir() if p.is_file()))
    console.print(f"wrote in {out_dir}: {written}", highlight=False, soft_wrap=True)


def check_options(options: dict) -> Settings:
    """The options as `Settings`, every range checked before any data is loaded; exits with one line."""
    for name in ("train_subset", "val_subset", "image_size"):
        if options[name] < 0:
            fail(f"--{name.replace('_', '-')} {options[name]} is out of range: must be ≥ 0 (0 = all)")
    for name in ("max_params", "max_macs", "max_latency_ms"):
        if options[name] < 0:
            fail(f"--{name.replace('_', '-')} {options[name]} is out of range: must be ≥ 0 (0 = no budget)")
    # every option named like a Settings field is that field; amp and channels_last are chosen later
    fields = {k: v for k, v in options.items() if k in Settings.__dataclass_fields__}
    settings = Settings(**{**fields, "amp": False, "channels_last": False})
    try:
        settings.check()
    except ValueError as error:
        fail(str(error))
    fast = STRATEGIES[settings.strategy][2] is not None
    for name in PAPER_ONLY if fast else FAST_ONLY:
        if options[name] != Settings.__dataclass_fields__[name].default:
            fail(f"--{name.replace('_', '-')} does nothing with --strategy {settings.strategy}: it is an option of "
                 + ("--strategy paper (fast uses --peak-lr, --short-epochs and --long-epochs)" if fast else
                    "--strategy fast") + "; drop it or change --strategy")
    return settings


def prepare_run(net: DepthNet, data: Data, s: Settings, options: dict, console) -> dict:
    """What a new run settles before the search, on the device at hand: the speed settings and the budget."""
    net.to(data.training_device).eval()  # eval: batch-norm cannot count a batch of one in training mode
    sample = normalise(data.train[0][:1].to(data.training_device), data.mean, data.std)
    first = rank_and_world()[0] == 0  # measured once, on rank 0: every rank then trains alike
    budget = from_rank_0(within_budget(net, odn.depth_costs(net, sample), sample, s.start_depth, options["max_params"],
                                       options["max_macs"], options["max_latency_ms"]) if first else None)
    speed = remembered_speed(net, data, s, options["arch"], options["amp"], options["channels_last"]) if first else None
    if first and STRATEGIES[s.strategy][2] is not None:  # `fast`: how an epoch's time grows with depth
        speed["by_depth"] = time_depths(net, data, s, speed["amp"], speed["channels_last"])
    speed = from_rank_0(speed)
    how = {"timed": f"the fastest of {len(speed['seconds_per_image'])} timed, remembered in {speed['file']}",
           "remembered": f"remembered from an earlier timing on this machine in {speed['file']}"}.get(
        speed["source"], "as given")
    console.print(f"speed: bf16 autocast {'on' if speed['amp'] else 'off'}, channels-last "
                  f"{'on' if speed['channels_last'] else 'off'} ({how}; --amp/--no-amp, --channels-last/"
                  "--no-channels-last to force)", highlight=False, soft_wrap=True)
    return {"speed": speed, "budget": budget}


def search_with_signals(net: DepthNet, data: Data, s: Settings, out_dir: Path, facts: dict, console,
                        state: dict | None) -> Result:
    """`odn.search` with live progress; Ctrl-C / SIGTERM stop at a batch with a checkpoint, and every failure
    is one line that says what is safe on disk and how to go on."""
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
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    launcher = f"torchrun --nproc-per-node {world} odn.py " if world > 1 else "python odn.py "
    resume_command = launcher + shlex.join([*(a for a in sys.argv[1:] if a not in ("--resume", "--force")), "--resume"])
    try:
        return run_with_progress(net, data, s, out_dir, facts, console, state, lambda: bool(signals))
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


@app.command()
def plot(run_dir: Annotated[Path, typer.Argument(help="a folder with a finished run's odn.json and history.jsonl")]):
    """Redraw a finished run's search.png and depths.png."""
    if not all((run_dir / name).is_file() for name in ("odn.json", "history.jsonl")):
        fail(f"{run_dir} holds no finished run (odn.json and history.jsonl); give the folder a run wrote")
    try:
        draw(run_dir, make_console())
    except (ValueError, KeyError, TypeError, OSError) as error:  # a damaged record: one line, no traceback
        fail(f"cannot draw {run_dir}: {type(error).__name__}: {error}", code=1)


@app.command()
def export(run_dir: Annotated[Path, typer.Argument(help="a folder with a finished run")],
           int8: Annotated[bool, typer.Option(help="also write model.int8.onnx (static int8)")] = False,
           data_dir: Annotated[str, typer.Option(help="data root (default: $ODN_DATA, else ./data)")] = ""):
    """Export a finished run to ONNX (parity and latency checked), added to its odn.json."""
    datasets, archs = siblings()
    try:
        model = odn.load(run_dir)
        record = json.loads((run_dir / "odn.json").read_text())
        dataset = datasets.load(record["data"], data_dir or None, image_size=record["image_size"])
        torch.manual_seed(record["settings"]["seed"])
        net = DepthNet(archs.build(record["arch"], num_classes=record["num_classes"], in_chans=record["in_chans"],
                                   image_size=record["image_size"]), record["num_classes"])
    except (LookupError, ValueError, OSError, datasets.DataUnavailable) as error:
        fail(str(error).strip("'\""))
    data = Data(dataset.train, dataset.val, dataset.test, dataset.mean, dataset.std)
    deploy_and_report(model, extract(net.eval(), net.max_depth), run_dir, data, record, make_console(), int8)


@app.command()
def describe(arch: Annotated[str, typer.Argument(help="a registered architecture name")],
             data: Annotated[str, typer.Option(help="size it for this data set's images and classes")] = "",
             data_dir: Annotated[str, typer.Option(help="data root (default: $ODN_DATA, else ./data)")] = "",
             image_size: Annotated[int, typer.Option(help="input size when no --data is named")] = 32):
    """Params, MB and multiply-adds of every depth of ARCH, before any training (3×32×32, 10 classes unless
    --data names a data set)."""
    datasets, archs = siblings()
    try:
        shape = (3, 10, image_size)
        if data:
            dataset = datasets.load(data, data_dir or None)
            shape = (dataset.in_chans, dataset.num_classes, dataset.image_size)
        net = DepthNet(archs.build(arch, num_classes=shape[1], in_chans=shape[0], image_size=shape[2]), shape[1])
    except (LookupError, ValueError, datasets.DataUnavailable) as error:
        fail(str(error).strip("'\""))
    make_console().print(depth_table(arch, net, *shape))


def architecture_list(archs):
    """`--list-archs`: every registered name, its plugin file and its pinned block count — nothing is built."""
    from rich.table import Table

    listing = Table(title="architectures (python odn.py describe NAME: params and multiply-adds per depth)",
                    caption=f"Also the name patterns {', '.join(sorted(archs.PATTERNS))}. * a plugin registered "
                            "without blocks=: python odn.py describe NAME counts them.")
    for name, justify in (("arch", "left"), ("blocks", "right"), ("plugin", "left")):
        listing.add_column(name, justify=justify)
    for name in archs.names():
        listing.add_row(name, str(archs.BLOCKS.get(name, "*")), f"archs/{archs.family(name)}.py")
    return listing


def depth_table(name: str, net: DepthNet, in_chans: int, num_classes: int, image_size: int):
    """`describe NAME`: Table I's size columns for every depth of one architecture, before any training."""
    from rich.table import Table

    costs = odn.depth_costs(net, torch.zeros(1, in_chans, image_size, image_size))
    table = Table(title=f"{name}: {net.max_depth} blocks ({in_chans}×{image_size}×{image_size} input, "
                        f"{num_classes} classes)",
                  caption="FLOPs = multiply-adds per image; a depth's network is stem + its blocks + its head.")
    for column in ("depth", "params", "size MB", "MFLOPs"):
        table.add_column(column, justify="right")
    for d, (params, macs) in enumerate(zip(costs["params"], costs["macs"]), 1):
        table.add_row(f"{d}/{net.max_depth}", f"{params:,}", f"{size_mb(params):.2f}", f"{macs / 1e6:,.1f}")
    return table


def siblings():
    """data.py and archs/ from beside odn.py (see `odn.sibling`), or one line saying how to get them."""
    try:
        return odn.sibling("data"), odn.sibling("archs")
    except ModuleNotFoundError as error:
        fail(f"{error}: install odn from its folder with pip install -e . (a wheel holds only odn.py and odn_cli.py)")


def make_console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=max(console.width, 110))  # Table I readable in logs


def fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def main() -> None:
    """Entry point of `python odn.py` and of the `odn` console script: a wrong option or value is one line."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        code = 130
    except Exception as error:  # click's UsageError (typer may ship its own click): by name, not by class
        if not any(kind.__name__ == "UsageError" for kind in type(error).__mro__):
            raise
        typer.echo(f"error: {error.format_message()} (python odn.py --help lists every option)", err=True)
        code = 2
    raise SystemExit(code or 0)


if __name__ == "__main__":
    main()
