"""Experiment (eighth session): at a depth whose second look points within reach but misses, compare
a long look started over (the current rule, `grid`'s row: L passes from the initial weights) with a
continuation from the second look's weights over L − S passes (one more one-cycle; S = a short look's passes),
which would keep the short look's passes instead of throwing both looks away.

    python bench/relook_continue.py PROFILE DEPTH [--keep K]   # K: the continuation's budget is L − K·S

fp32, contiguous (pinned: the variants differ only in the recipe). Prints one JSON line."""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import typer

import odn
from bench import PROFILES, fresh_net, load, machine


def main(profile: str, depth: int, keep: str = "1", restart: bool = True) -> None:
    p = PROFILES[profile]
    dataset, data = load(p, None)
    s = odn.Settings(target=p["target"], strategy="fast", amp=False, channels_last=False,
                     **{k: v for k, v in p["settings"].items() if k not in ("amp", "channels_last", "warmup_epochs")})
    net = fresh_net(p["arch"], dataset).eval()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    macs = odn.depth_costs(net, odn.normalise(data.train[0][:1], data.mean, data.std))["macs"][depth - 1]
    per_epoch = odn.steps_per_epoch(len(data.train[1]), s.batch_size)
    long = odn.schedule_epochs(odn.Phase("finetune", depth, 0), s, per_epoch)
    noop = lambda r: None
    t0 = time.time()

    def train(phase, state):
        net.load_state_dict(state)
        optimizer = odn.sgd(net.parameters_at(depth), phase.lr, s)
        odn.train_phase(net, phase, data, optimizer, s, macs, odn.shuffler(s, phase), noop, odn.end_of_schedule,
                        odn.one_cycle)
        return {k: v.clone() for k, v in net.state_dict().items()}  # best weights at this depth, left in the net

    short = odn.Phase("search", depth, s.peak_lr)
    after_short = train(short, initial)
    relook = odn.Phase("relook", depth, s.peak_lr, best_val=short.best_val, budget=short.budget)
    after_relook = train(relook, after_short)
    passes = short.budget + relook.budget
    predicted = 1 - odn.relook_error(1 - short.best_val, 1 - relook.best_val, passes, long)
    row = {"profile": profile, "depth": depth, "target": p["target"], "S": short.budget, "L": long,
           "short": short.best_val, "relook": relook.best_val, "predicted_long": predicted}
    for k in [float(k) for k in keep.split(",")]:
        cont = odn.Phase("finetune", depth, s.peak_lr, best_val=relook.best_val,
                         budget=max(1, round(long - k * short.budget)))
        train(cont, after_relook)
        row[f"continue_L-{k:g}S"] = cont.best_val
        row[f"continue_L-{k:g}S_curve"] = cont.val_curve
    if restart:
        fresh = odn.Phase("finetune", depth, s.peak_lr)
        train(fresh, initial)
        row["restart_L"] = fresh.best_val
    row["seconds"] = round(time.time() - t0)
    row.update(machine())
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    typer.run(main)
