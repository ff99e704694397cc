"""Benchmarks for odn: search strategies side by side, and the training loop against bare PyTorch.

    python bench.py strategies --profile digits            # the paper's protocol numbers, ~3 min on 2 cores
    python bench.py strategies --profile mnist             # ResNet-18, CPU-sized profile (see PROFILES)
    python bench.py strategies --profile fashion           # ResNet-34, CPU-sized profile
    python bench.py speed                                  # odn's loop vs a bare loop; --amp; channels_last

Each strategy runs on the same data, seed, initial weights and caps; the full-depth baseline
(same convergence rule, same initial weights) runs once. Prints a markdown table for BENCHMARKS.md.
Numbers are measured, never assumed: nothing here is hard-coded but the profiles.
"""
from __future__ import annotations

import platform
import sys
import time
from datetime import date

import torch
import typer
from torch.nn import functional as F

import archs
import data as datasets
import odn

# CPU-sized profiles: every strategy shares one; the digits profile is the paper's protocol.
PROFILES = {
    "digits": dict(arch="resnet18", data="digits", target=0.98, train=0, val=0,
                   settings=dict()),
    "mnist": dict(arch="resnet18", data="mnist", target=0.85, train=2000, val=1000,
                  settings=dict(warmup_epochs=1, patience=6, lr_patience=2, amp=True, channels_last=True)),
    "fashion": dict(arch="resnet34", data="fashion_mnist", target=0.70, train=1000, val=1000,
                    settings=dict(warmup_epochs=1, patience=6, lr_patience=2, amp=True, channels_last=True)),
}

app = typer.Typer(pretty_exceptions_show_locals=False, add_completion=False)


def load(profile: dict, data_dir: str | None):
    dataset = datasets.load(profile["data"], data_dir)
    train, val = dataset.train, dataset.val
    if profile["train"]:
        keep = torch.randperm(len(train[1]), generator=torch.Generator().manual_seed(0))[:profile["train"]]
        train = (train[0][keep], train[1][keep])
    if profile["val"]:
        val = (val[0][:profile["val"]], val[1][:profile["val"]])
    return dataset, odn.Data(train, val, dataset.test, dataset.mean, dataset.std)


def fresh_net(name: str, dataset) -> odn.DepthNet:
    torch.manual_seed(0)  # every strategy starts from the same initial weights
    partition = archs.build(name, num_classes=dataset.num_classes, in_chans=dataset.in_chans,
                            image_size=dataset.image_size)
    return odn.DepthNet(partition, dataset.num_classes)


def progress(record: dict) -> None:
    if record["event"] == "phase":
        print(f"  {record['name']} depth {record['depth']}: best val {record['best_val']:.4f}, "
              f"{record['epochs']} epochs, {record['seconds']:.0f} s", file=sys.stderr, flush=True)


@app.command()
def strategies(profile: str = "digits", names: str = "paper,early,carry", baseline: bool = True,
               data_dir: str = "") -> None:
    """Run each strategy on one profile and print a markdown table."""
    p = PROFILES[profile]
    dataset, data = load(p, data_dir or None)
    rows, paper_flops = [], None
    for i, name in enumerate(names.split(",")):
        net = fresh_net(p["arch"], dataset)
        s = odn.Settings(target=p["target"], strategy=name, baseline=baseline and i == 0, **p["settings"])
        start = time.perf_counter()
        result = odn.search(net, data, s, on_event=progress)
        seconds = time.perf_counter() - start
        model = odn.extract(net, result.depth).eval()
        test = odn.accuracy(model, data.test, data)
        cost = result.cost
        paper_flops = paper_flops or cost["flops"]
        if result.baseline is not None:
            full = odn.extract(net, net.max_depth)
            full.load_state_dict(result.weights["baseline"])
            base = result.baseline
            base_test = odn.accuracy(full.eval(), data.test, data)
            rows.append(("full-depth baseline", net.max_depth, base.best_val, base_test, base.flops, base.images,
                         base.epochs, base.seconds, None))
        rows.append((name, result.depth, result.val_accuracy, test, cost["flops"], cost["images"], cost["epochs"],
                     cost["seconds"], cost["flops"] / paper_flops))
        print(f"{name}: depth {result.depth} val {result.val_accuracy:.4f} test {test:.4f} "
              f"{cost['flops'] / 1e12:.2f} TFLOP {seconds:.0f} s", flush=True)
    base_flops = next((r[4] for r in rows if r[0] == "full-depth baseline"), None)
    print(f"\n### {profile}: {p['arch']} on {p['data']}, target {p['target']}, "
          f"train {len(data.train[1]):,} / val {len(data.val[1]):,} / test {len(data.test[1]):,}, "
          f"settings {p['settings'] or 'paper protocol'}\n")
    print("| strategy | depth | val acc | test acc | train TFLOP | images | epochs | wall s | ÷ paper | ÷ baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, depth, val, test, flops, images, epochs, seconds, ratio in rows:
        print(f"| {name} | {depth} | {val:.2%} | {test:.2%} | {flops / 1e12:.2f} | {images:,} | {epochs} | "
              f"{seconds:.0f} | {'—' if ratio is None else f'{ratio:.2f}'} | "
              f"{'—' if base_flops is None else f'{flops / base_flops:.2f}'} |")
    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}: `python bench.py strategies --profile {profile}`")


def bare_epoch(net: odn.DepthNet, depth: int, x, y, batch_size: int, memory_format) -> None:
    """The loop a user would write by hand: same model, batches, optimizer; no odn code."""
    optimizer = torch.optim.SGD(net.parameters_at(depth), lr=0.01, momentum=0.9, weight_decay=5e-4)
    mean, std = 0.1307, 0.3081
    order = torch.randperm(len(x))
    for i in range(0, len(x), batch_size):
        index = order[i:i + batch_size]
        xb = ((x[index].float() / 255 - mean) / std).contiguous(memory_format=memory_format)
        loss = F.cross_entropy(net(xb, depth), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@app.command()
def speed(images: int = 2560, depth: int = 1, data_dir: str = "", repeats: int = 3) -> None:
    """Images/s of odn's training epoch vs a bare PyTorch loop (same model, depth, batch, format)."""
    dataset = datasets.load("mnist", data_dir or None)
    x, y = dataset.train[0][:images], dataset.train[1][:images]
    data = odn.Data((x, y), (x[:10], y[:10]), mean=dataset.mean, std=dataset.std)
    print("| loop | memory format | amp | img/s | vs bare |\n|---|---|---|---|---|")
    for channels_last in (False, True):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = fresh_net("resnet18", dataset).to(memory_format=memory_format).train()
        timings = {}
        for loop in ("bare", "odn", "odn --amp"):
            s = odn.Settings(channels_last=channels_last, amp=loop.endswith("amp"))
            best = 0.0
            for _ in range(repeats):  # interleaved best-of-N: the machine is shared
                start = time.perf_counter()
                if loop == "bare":
                    bare_epoch(net, depth, x, y, 128, memory_format)
                else:
                    optimizer = odn.sgd(net.parameters_at(depth), 0.01, s)
                    odn.train_epoch(lambda a, b: F.cross_entropy(net(a, depth), b), optimizer, data, s,
                                    torch.Generator().manual_seed(0))
                best = max(best, images / (time.perf_counter() - start))
            timings[loop] = best
            print(f"| {loop} | {'channels_last' if channels_last else 'contiguous'} | "
                  f"{'bf16' if s.amp else '—'} | {best:.0f} | {best / timings['bare']:.2f} |", flush=True)
    print(f"\n{date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"ResNet-18 depth {depth}, MNIST 28×28, batch 128: `python bench.py speed`")


if __name__ == "__main__":
    app()
