"""Research: do two neighbouring depths trained as one (depth d+1 with heads d and d+1, summed loss) read what
each reads trained alone? If they do, a narrow miss and its next depth could share one long look.

    python bench/pair.py fashion_mbv3l_2500 2        # depth 2 alone, depth 3 alone, depths 2+3 together

Every run: `fast`'s long look (one-cycle to the peak LR, the same passes), from the same initial weights,
fp32 and no channels-last (no speed timing: the three runs differ only in what is compared). Prints one
markdown row per run and writes bench/results/PROFILE-pairD.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402 — its PROFILES, load, fresh_net and machine()

odn = bench.odn


def long_look(net: odn.DepthNet, data: odn.Data, s: odn.Settings, heads: list[int]) -> dict:
    """Train depth max(heads) on the summed loss of `heads` with fast's long one-cycle; best val per head."""
    deepest = max(heads)
    params = nn.ModuleList([net.stem, *net.blocks[:deepest], *(net.heads[h - 1] for h in heads)]).parameters()
    optimizer = odn.sgd(params, s.peak_lr, s)
    per_epoch = odn.steps_per_epoch(len(data.train[1]), s.batch_size)
    epochs = odn.schedule_epochs(odn.Phase("finetune", deepest, 0), s, per_epoch)
    steps = epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: odn.one_cycle(step, steps))
    generator = odn.shuffler(s, odn.Phase("finetune", deepest, 0))
    macs = odn.depth_costs(net.eval(), odn.normalise(data.train[0][:1], data.mean, data.std))["macs"]

    def loss_fn(x, y):
        logits = net.forward_all(x, deepest)
        return sum(F.cross_entropy(logits[h - 1], y) for h in heads)

    best, curves, flops, start = {h: 0.0 for h in heads}, {h: [] for h in heads}, 0.0, time.perf_counter()
    for _ in range(epochs):
        net.train()
        _, images = odn.train_epoch(loss_fn, optimizer, data, s, generator, scheduler=scheduler)
        flops += 3.0 * macs[deepest - 1] * images
        net.eval()
        for h in heads:
            val = odn.accuracy(lambda x: net(x, h), data.val, data)
            curves[h].append(round(val, 4))
            best[h] = max(best[h], val)
    return {"heads": heads, "epochs": epochs, "best": best, "curves": curves, "flops": flops,
            "seconds": time.perf_counter() - start}


def main(profile: str, depth: int) -> None:
    p = bench.PROFILES[profile]
    dataset, data = bench.load(p, None)
    s = odn.Settings(target=p["target"], strategy="fast", amp=False, channels_last=False)
    runs = []
    for heads in ([depth], [depth + 1], [depth, depth + 1]):
        net = bench.fresh_net(p["arch"], dataset)
        runs.append(long_look(net, data, s, heads))
        r = runs[-1]
        print(f"| {profile} | {'+'.join(map(str, heads))} | " + ", ".join(f"head {h}: {v:.2%}" for h, v in r["best"].items())
              + f" | {r['flops'] / 1e12:.3f} | {r['seconds']:.0f} |", flush=True)
    out = Path(bench.RESULTS) / f"{profile}-pair{depth}.json"
    out.write_text(json.dumps({"profile": profile, "depth": depth, "runs": runs, **bench.machine()}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
