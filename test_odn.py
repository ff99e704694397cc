"""Behaviour of odn: the plateau rule, the search's choices, parameter counts, round-trips, the CLI."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import archs
import data as datasets
import odn

HERE = Path(__file__).parent
ODN_DATA = os.environ.get("ODN_DATA")
needs_mnist = pytest.mark.skipif(not (ODN_DATA and (Path(ODN_DATA) / "MNIST" / "raw").is_dir()),
                                 reason="real MNIST not found under $ODN_DATA")


# ----------------------------------------------------------------------------------------------
# controlled data and a hand-written DepthPartitionable network


class TinyNet:
    """Depth 1 is linear in the inputs; deeper depths add a hidden ReLU layer each."""

    def __init__(self, depth: int = 3, width: int = 32):
        self.stem = nn.Identity()
        self.blocks = [nn.Identity()] + [nn.Sequential(nn.Linear(2 if i == 0 else width, width), nn.ReLU())
                                         for i in range(depth - 1)]
        self.channels = [2] + [width] * (depth - 1)

    def make_head(self, channels: int, num_classes: int) -> nn.Module:
        return nn.Linear(channels, num_classes)


def two_class_points(n: int, xor: bool, seed: int, noise: float = 0.0):
    """Four clusters at (±1, ±1); label = quadrant XOR (needs a hidden layer) or the sign of x0 (linear)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    which = torch.randint(0, 4, (n,), generator=g)
    x = centres[which] + 0.25 * torch.randn(n, 2, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long() if xor else (x[:, 0] > 0).long()
    flip = torch.rand(n, generator=g) < noise
    return x, torch.where(flip, 1 - y, y)


def points_data(xor: bool, noise: float = 0.0) -> odn.Data:
    return odn.Data(train=two_class_points(512, xor, 0, noise), val=two_class_points(256, xor, 1, noise),
                    test=two_class_points(256, xor, 2, noise), mean=(0.0, 0.0), std=(1.0, 1.0))


QUICK = dict(warmup_epochs=1, lr=0.1, batch_size=64, patience=6, lr_patience=2, seed=0)


# ----------------------------------------------------------------------------------------------
# the plateau rule (§III-C)


def test_plateau_rule_decays_every_fifth_stale_epoch_and_converges_at_23():
    s = odn.Settings()
    phase = odn.Phase("search", 1, 0.01)
    accuracies = [0.5, 0.6] + [0.6] * 7 + [0.7] + [0.65] * 23  # a best at epoch 10 resets the counter
    decays, converged_at = [], None
    for epoch, acc in enumerate(accuracies, 1):
        phase.epochs = epoch
        improved, decay = odn.plateau_step(phase, acc, s)
        if decay:
            decays.append(epoch)
        if phase.converged:
            converged_at = epoch
            break
    # stale epochs after the 0.6 best: 3..9 → the 5th stale one is epoch 7; after the 0.7 best at
    # epoch 10, epochs 15, 20, 25, 30 are the 5th/10th/15th/20th stale ones; the 23rd is epoch 33
    assert decays == [7, 15, 20, 25, 30]
    assert converged_at == 33
    assert phase.best_val == 0.7


def test_training_loop_applies_the_rule_to_the_learning_rate(monkeypatch):
    scripted = iter([0.5] + [0.4] * 12)
    monkeypatch.setattr(odn, "accuracy", lambda *a, **k: next(scripted))
    net = odn.DepthNet(TinyNet(), 2)
    s = odn.Settings(patience=12, lr_patience=5, lr_decay=0.5, lr=0.1)
    events = []
    phase = odn.Phase("search", 1, s.lr)
    odn.train_until_converged(net, phase, points_data(False), odn.sgd(net.parameters_at(1), s.lr, s), s,
                              macs=1, generator=torch.Generator().manual_seed(0), emit=events.append)
    lrs = [e["lr"] for e in events if e["event"] == "epoch"]
    # epochs 2..6 are stale: the LR halves after epoch 6 and after epoch 11; converged after 13
    assert lrs == [0.1] * 6 + [0.05] * 5 + [0.025] * 2
    assert phase.epochs == 13 and phase.converged


# ----------------------------------------------------------------------------------------------
# the search


def test_search_picks_the_first_depth_that_meets_the_target():
    result = odn.search(odn.DepthNet(TinyNet(depth=3), 2), points_data(xor=True), odn.Settings(target=0.95, **QUICK))
    searched = [p for p in result.phases if p.name == "search"]
    assert [p.depth for p in searched] == [1, 2]  # depth 1 is linear and cannot solve XOR
    assert searched[0].best_val < 0.95 <= searched[1].best_val
    assert result.depth == 2 and result.target_reached
    assert [p.name for p in result.phases] == ["warmup", "search", "search", "finetune"]


def test_search_stops_at_depth_one_on_a_linear_task():
    result = odn.search(odn.DepthNet(TinyNet(depth=3), 2), points_data(xor=False), odn.Settings(target=0.95, **QUICK))
    assert result.depth == 1 and result.target_reached
    assert [p.depth for p in result.phases if p.name == "search"] == [1]


def test_every_expansion_restarts_from_the_warmup_weights_at_half_the_lr(monkeypatch):
    starts = []
    real = odn.train_until_converged

    def spy(net, phase, *args, **kwargs):
        starts.append((phase.name, phase.depth, phase.lr, {k: v.clone() for k, v in net.state_dict().items()}))
        return real(net, phase, *args, **kwargs)

    monkeypatch.setattr(odn, "train_until_converged", spy)
    s = odn.Settings(target=0.999, **QUICK)  # unreachable with 5 % label noise: every depth is tried
    result = odn.search(odn.DepthNet(TinyNet(depth=3), 2), points_data(xor=True, noise=0.05), s)
    searches = [start for start in starts if start[0] == "search"]
    assert [(d, lr) for _, d, lr, _ in searches] == [(1, 0.1), (2, 0.05), (3, 0.05)]
    for _, _, _, state in searches:
        assert all(torch.equal(state[k], result.warmup_weights[k]) for k in state)
    # the converged depth-1 weights differed from warm-up, so the reload really happened
    head = result.weights[1]["head.weight"]
    assert not torch.equal(head, result.warmup_weights["heads.0.weight"])
    assert not result.target_reached
    best = max((p for p in result.phases if p.name == "search"), key=lambda p: p.best_val)
    assert result.depth == best.depth


def test_cost_accounting_adds_up():
    data = points_data(xor=True)
    result = odn.search(odn.DepthNet(TinyNet(depth=3), 2), data, odn.Settings(target=0.95, **QUICK))
    cost = result.cost
    assert cost["epochs"] == sum(p.epochs for p in result.phases)
    assert cost["images"] == sum(p.images for p in result.phases)
    for p in result.phases:
        assert p.images == p.epochs * 512
        assert p.flops == 3 * result.macs[p.depth - 1] * p.images
    # depth 1: head 2→2; depth 2: hidden 2→32 and head 32→2
    assert result.macs[:2] == [4, 2 * 32 + 32 * 2]


def test_settings_are_checked():
    net = odn.DepthNet(TinyNet(), 2)
    for bad in (dict(target=0.0), dict(target=1.01), dict(strategy="nope"), dict(start_depth=4),
                dict(max_depth=2, start_depth=3)):
        with pytest.raises(ValueError):
            odn.search(net, points_data(False), odn.Settings(**bad))


# ----------------------------------------------------------------------------------------------
# architectures: the paper's parameter counts, exactly


@pytest.mark.parametrize("name, in_chans, size, depth, params", [
    ("resnet18", 1, 28, 8, 11_172_810),
    ("resnet18", 1, 28, 2, 149_322),
    ("resnet34", 1, 28, 6, 1_044_938),
    ("resnet50", 3, 32, 11, 6_311_498),
])
def test_paper_parameter_counts(name, in_chans, size, depth, params):
    net = odn.DepthNet(archs.build(name, num_classes=10, in_chans=in_chans, image_size=size), 10)
    assert net.max_depth == {"resnet18": 8, "resnet34": 16, "resnet50": 16}[name]
    assert odn.count_params(odn.extract(net, depth)) == params


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(LookupError, match="known: .*resnet18"):
        archs.build("resnet7", num_classes=10, in_chans=1, image_size=28)


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        archs.register("resnet18")(lambda **kw: None)


# ----------------------------------------------------------------------------------------------
# extract, save, load


def test_extract_and_load_reproduce_the_logits(tmp_path):
    torch.manual_seed(0)
    net = odn.DepthNet(archs.build("resnet18", num_classes=10, in_chans=1, image_size=28), 10).eval()
    x = torch.randn(4, 1, 28, 28)
    model = odn.extract(net, 3).eval()
    assert torch.equal(model(x), net(x, 3))
    facts = {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "image_size": 28, "depth": 3}
    odn.save_weights(tmp_path / "odn.safetensors", model.state_dict(), facts)
    odn.save_json(tmp_path / "odn.json", facts)
    loaded = odn.load(tmp_path)
    assert not loaded.training
    assert torch.equal(loaded(x), model(x))


def test_weights_move_between_the_multi_head_model_and_an_extracted_depth():
    net = odn.DepthNet(TinyNet(), 2)
    other = odn.DepthNet(TinyNet(), 2)
    other.load_state_at(2, net.state_at(2))
    x = torch.randn(5, 2)
    assert torch.equal(other(x, 2), net(x, 2))
    assert not torch.equal(other.heads[0].weight, net.heads[0].weight)  # depth 1's head untouched


def test_load_of_a_missing_or_corrupt_folder_says_so(tmp_path):
    with pytest.raises(ValueError, match="cannot load a network from"):
        odn.load(tmp_path)
    (tmp_path / "odn.json").write_text("{}")
    (tmp_path / "odn.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot load a network from"):
        odn.load(tmp_path)


# ----------------------------------------------------------------------------------------------
# the command line, end to end


def run_cli(*args, cwd=HERE, env=None):
    return subprocess.run([sys.executable, str(HERE / "odn.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=600)


def test_end_to_end_on_digits_writes_every_output(tmp_path):
    out = tmp_path / "run"
    done = run_cli("--max-depth", "3", "--warmup-epochs", "1", "--max-epochs", "3", "--target", "0.9",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "odn.json").read_text())
    depth = record["depth"]
    for name in ["odn.safetensors", "odn.json", "warmup.safetensors", "history.jsonl",
                 *[f"depth-{p['depth']}.safetensors" for p in record["phases"] if p["name"] == "search"]]:
        assert (out / name).is_file(), name
    for key in ("arch", "data", "depth", "max_depth", "num_classes", "in_chans", "image_size", "mean", "std",
                "target", "target_reached", "val_accuracy", "test_accuracy", "params", "size_mb", "flops",
                "full", "search_cost", "strategy"):
        assert key in record, key
    assert record["max_depth"] == 8 and record["full"]["params"] == 11_172_810
    assert record["params"] == {1: 75_338, 2: 149_322, 3: 380_106}[depth]
    assert record["size_mb"] == pytest.approx(record["params"] * 4 / 2**20)
    # phases sum to the reported cost; history has one line per epoch
    cost = record["search_cost"]
    assert cost["epochs"] == sum(p["epochs"] for p in record["phases"])
    assert cost["images"] == sum(p["images"] for p in record["phases"])
    assert len((out / "history.jsonl").read_text().splitlines()) == cost["epochs"]
    # the table has a row per depth trained plus the full depth; the chosen row matches the record
    rows = record["rows"]
    assert [r["depth"] for r in rows][-1] == 8
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["test_accuracy"] == record["test_accuracy"]
    assert "search cost" in done.stdout and f"{depth}/8 ★" in done.stdout
    # the saved network reproduces the recorded test accuracy exactly
    d = datasets.load("digits")
    model = odn.load(out)
    assert odn.accuracy(model, d.test, odn.Data(d.train, d.val, d.test, d.mean, d.std)) == record["test_accuracy"]


@pytest.mark.parametrize("args, message", [
    (["--arch", "resnet7"], "unknown architecture 'resnet7'; known:"),
    (["--data", "imagenet22k"], "unknown data set 'imagenet22k'; known:"),
    (["--target", "1.5"], "--target must be in (0, 1]"),
    (["--target", "0"], "--target must be in (0, 1]"),
    (["--data", "mnist", "--data-dir", "/nonexistent-odn"], "mnist: no files under"),
])
def test_cli_errors_are_one_line(args, message):
    done = run_cli(*args, "--out", "/tmp/odn-should-not-exist")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_copied_file_works_alone(tmp_path):
    """odn.py copied into another project runs with the user's own network and tensors."""
    (tmp_path / "odn.py").write_text((HERE / "odn.py").read_text())
    script = textwrap.dedent("""
        import sys
        sys.modules["archs"] = None  # prove odn.py never needs its siblings as a library
        sys.modules["data"] = None
        import torch, odn
        from torch import nn

        class Mine:
            stem = nn.Conv2d(1, 8, 3, padding=1)
            blocks = [nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3)]
            channels = [8, 8, 8]

        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (96, 1, 6, 6), dtype=torch.uint8, generator=g)
        y = (x.float().mean((1, 2, 3)) > 127).long()
        data = odn.Data(train=(x[:64], y[:64]), val=(x[64:], y[64:]), mean=(0.5,), std=(0.25,))
        result = odn.search(odn.DepthNet(Mine(), 2), data, odn.Settings(target=0.5, warmup_epochs=1, max_epochs=2))
        print("depth", result.depth, "reached", result.target_reached)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "depth 1 reached True"


# ----------------------------------------------------------------------------------------------
# data


def test_digits_split_is_fixed_and_stratified():
    d = datasets.load("digits")
    assert [len(s[1]) for s in (d.train, d.val, d.test)] == [1257, 180, 360]
    assert d.train[0].dtype == torch.uint8 and d.train[0].shape[1:] == (1, 8, 8)
    assert torch.bincount(d.val[1]).tolist() == [18] * 10  # stratified: 18 of each digit
    assert torch.equal(datasets.load("digits").train[1], d.train[1])


@needs_mnist
@pytest.mark.parametrize("name, mean", [("mnist", 0.1307), ("fashion_mnist", 0.2860)])
def test_real_mnist_splits(name, mean):
    d = datasets.load(name, ODN_DATA)
    assert [len(s[1]) for s in (d.train, d.val, d.test)] == [50_000, 10_000, 10_000]
    assert d.train[0].shape[1:] == (1, 28, 28) and d.train[0].dtype == torch.uint8
    assert d.mean == (mean,) and d.num_classes == 10
    assert int(d.train[1].max()) == 9 and int(d.test[1].min()) == 0


@needs_mnist
def test_real_mnist_depth_one_learns():
    d = datasets.load("mnist", ODN_DATA)
    data = odn.Data(train=(d.train[0][:2000], d.train[1][:2000]), val=(d.val[0][:1000], d.val[1][:1000]),
                    mean=d.mean, std=d.std)
    net = odn.DepthNet(archs.build("resnet18", num_classes=10, in_chans=1, image_size=28), 10)
    # depth 1 (one conv + global pooling) learns slowly: 0.33 val after 3 epochs on 2,000 images
    s = odn.Settings(target=0.25, warmup_epochs=0, lr=0.05, max_epochs=3, max_depth=2)
    result = odn.search(net, data, s)
    assert result.depth == 1 and result.target_reached and result.val_accuracy >= 0.25
    # the paper's MNIST figures: depth 1 and 2 cost 58 M and 116 M multiply-adds per image
    assert [round(m / 1e6) for m in result.macs[:2]] == [58, 116]
