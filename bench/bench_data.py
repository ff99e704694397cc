"""Is the in-memory loader a bottleneck? Images/s on MNIST's 50,000 train images, batch 128, CPU.

    ODN_DATA=../shared/data python bench/bench_data.py          # ≈ 1 min on 2 CPU cores

Measures, each over a fixed number of batches after one warm-up batch:
  1. odn.batches alone (shuffle, slice, normalise on tensors), without and with crop augmentation,
     with 1 and 2 intra-op threads;
  2. training steps of ResNet-18 at depth 1 (the cheapest step odn ever takes) with that loader;
  3. torchvision's DataLoader over MNIST with per-sample ToTensor + Normalize (0 and 2 workers).
Results are in BENCHMARKS.md, "Data loading".
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # odn.py, data.py, archs/ beside bench/

import torch
import torch.nn.functional as F

import odn

archs, datasets = odn.sibling("archs"), odn.sibling("data")  # odn's own, under private names


def images_per_second(batches, limit: int, step=lambda x, y: None) -> float:
    it = iter(batches)
    step(*next(it))  # warm-up: first-call allocations, worker start-up
    start, images = time.perf_counter(), 0
    for _, (x, y) in zip(range(limit), it):
        step(x, y)
        images += len(y)
    return images / (time.perf_counter() - start)


def main(limit: int = 300, train_steps: int = 20) -> None:
    d = datasets.load("mnist")
    plain = odn.Data(d.train, d.val, d.test, d.mean, d.std)
    augmented = odn.Data(d.train, d.val, d.test, d.mean, d.std, augment=datasets.crop)
    batches = lambda data, seed=0: odn.batches(*data.train, 128, data, torch.Generator().manual_seed(seed))
    rows = {}
    # on busy shared cores, intra-op threads wait on each other for these tiny tensor ops: measure both
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows[f"odn.batches (in memory), {threads} thread(s)"] = images_per_second(batches(plain), limit)
        rows[f"odn.batches + crop augmentation, {threads} thread(s)"] = images_per_second(batches(augmented), limit)

    net = odn.DepthNet(archs.build("resnet18", num_classes=10, in_chans=1, image_size=28), 10)
    optimizer = torch.optim.SGD(net.parameters_at(1), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step(x, y):
        loss = F.cross_entropy(net(x, 1), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for threads in (1, 2):
        torch.set_num_threads(threads)
        step = f"training step, ResNet-18 depth 1, with odn.batches, {threads} thread(s)"
        rows[step] = images_per_second(batches(plain), train_steps, train_step)

    from torchvision import datasets as tv, transforms

    per_sample = tv.MNIST(str(datasets.default_root()), train=True, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(d.mean, d.std)]))
    torch.set_num_threads(1)
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(per_sample, batch_size=128, shuffle=True, num_workers=workers)
        name = f"torchvision DataLoader, ToTensor + Normalize, {workers} workers, 1 thread"
        rows[name] = images_per_second(loader, limit)

    width = max(map(len, rows))
    for name, rate in rows.items():
        print(f"{name:<{width}}  {rate:>10,.0f} images/s")


if __name__ == "__main__":
    main()
