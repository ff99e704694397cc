"""Depth (odn) against width (Torch-Pruning) at equal parameters.

Takes a finished odn run made with `--baseline` (so the full network was trained alone with the same
recipe and its weights are in baseline.safetensors), prunes that full network's channels with
Torch-Pruning (group magnitude importance, the library's default recipe) until it has as many parameters
as odn's optimal network, fine-tunes it for as many epochs as odn's fine-tune took, with the same
one-cycle recipe, and compares test accuracy, multiply-adds and batch-1 latency.

    python odn.py --strategy fast --baseline --out runs/prune-digits --no-amp --no-channels-last
    python bench/bench_prune.py runs/prune-digits

Torch-Pruning is a benchmark-only dependency: pip install torch-pruning.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # odn.py, data.py, archs/ beside bench/

import torch
import typer
from safetensors.torch import load_file

import odn
import odn_cli

archs, datasets = odn.sibling("archs"), odn.sibling("data")  # odn's own, under private names


def prune_to(model: torch.nn.Module, sample: torch.Tensor, params: int):
    """A channel-pruned copy of `model` with at most `params` parameters (bisection on the ratio)."""
    import copy

    import torch_pruning as tp

    low, high, best = 0.0, 0.999, None
    for _ in range(14):
        ratio = (low + high) / 2
        trial = copy.deepcopy(model)
        ignored = [m for m in trial.head.modules() if isinstance(m, torch.nn.Linear)]  # keep the classes
        pruner = tp.pruner.MetaPruner(trial, sample, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored, global_pruning=False)
        pruner.step()
        count = odn.count_params(trial)
        if count <= params:
            best, high = (trial, ratio, count), ratio
        else:
            low = ratio
    return best


def main(run_dir: str, data_dir: str = "") -> None:
    run = Path(run_dir)
    record = json.loads((run / "odn.json").read_text())
    if not (run / "baseline.safetensors").is_file():
        raise SystemExit(f"{run} has no baseline.safetensors: make the run with --baseline")
    dataset = datasets.load(record["data"], data_dir or None)
    data = odn.Data(dataset.train, dataset.val, dataset.test, dataset.mean, dataset.std)
    torch.manual_seed(0)
    net = odn.DepthNet(archs.build(record["arch"], num_classes=record["num_classes"], in_chans=record["in_chans"],
                                   image_size=record["image_size"]), record["num_classes"])
    full = odn.extract(net, net.max_depth)
    full.load_state_dict(load_file(str(run / "baseline.safetensors")))
    optimal = odn.load(run)
    sample = odn.normalise(dataset.train[0][:1], dataset.mean, dataset.std)
    pruned, ratio, params = prune_to(full.eval(), sample, odn.count_params(optimal))
    before = odn.accuracy(pruned.eval(), data.test, data)
    # the same recipe and epoch budget as odn's fine-tune
    epochs = sum(p["epochs"] for p in record["phases"] if p["name"] == "finetune")
    s = odn.Settings(**{k: v for k, v in record["settings"].items() if k in odn.Settings.__dataclass_fields__})
    optimizer = odn.sgd(pruned.parameters(), s.peak_lr, s)
    steps = epochs * odn.steps_per_epoch(len(data.train[1]), s.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: odn.one_cycle(step, steps))
    generator = torch.Generator().manual_seed(s.seed)
    best, best_val = None, -1.0
    for _ in range(epochs):
        pruned.train()
        odn.train_epoch(lambda x, y: torch.nn.functional.cross_entropy(pruned(x), y), optimizer, data, s, generator,
                        scheduler=scheduler)
        val = odn.accuracy(pruned.eval(), data.val, data)
        if val > best_val:
            best_val, best = val, {k: v.clone() for k, v in pruned.state_dict().items()}
    pruned.load_state_dict(best)
    rows = []
    for name, model, val in (("odn: depth %d/%d" % (record["depth"], record["max_depth"]), optimal,
                              record["val_accuracy"]),
                             (f"Torch-Pruning: full width × (1 − {ratio:.3f})", pruned, best_val),
                             ("full network (baseline)", full, record["full"].get("val_accuracy"))):
        model.eval()
        rows.append((name, odn.count_params(model), odn.forward_macs(model, sample),
                     odn_cli.latency_ms(model, sample, repeats=50), val, odn.accuracy(model, data.test, data)))
    print(f"{record['arch']} on {record['data']}: pruned to {params:,} parameters (test {before:.2%} before "
          f"fine-tuning), fine-tuned {epochs} epochs — {odn_cli.cpu_model()}, {torch.get_num_threads()} threads")
    print("| network | params | MFLOPs | batch-1 ms | val | test |\n|---|---|---|---|---|---|")
    for name, count, macs, ms, val, test in rows:
        val = "—" if val is None else f"{val:.2%}"
        print(f"| {name} | {count:,} | {macs / 1e6:.2f} | {ms:.2f} | {val} | {test:.2%} |")


if __name__ == "__main__":
    typer.run(main)
