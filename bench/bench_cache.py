"""The memory-mapped cache (`--cache`): build time, read throughput against the in-memory path, and
resident memory under a memory cap several times smaller than the cache.

    python bench/bench_cache.py decode --images 3000      # decode a PNG folder into the cache: images/s
    python bench/bench_cache.py read --images 50000       # one shuffled epoch: in memory vs mapped, img/s
    python bench/bench_cache.py capped --gib 2 --cap-mib 600   # read a 2 GiB cache under a 600 MiB cap

`capped` needs a writable cgroup-v1 memory controller (root in a container); it says so otherwise.
Numbers go to BENCHMARKS.md with the date, CPU model and threads this prints.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # odn.py, data.py, archs/ beside bench/

import torch
import typer

import odn
import odn_cli

archs, datasets = odn.sibling("archs"), odn.sibling("data")  # odn's own, under private names

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


def machine() -> str:
    return f"{date.today()}, {odn_cli.cpu_model()}, {torch.get_num_threads()} threads"


def synthetic_cache(path: Path, images: int, size: int) -> None:
    """A cache of random 3×size×size images written chunk by chunk (never whole in memory)."""
    labels = torch.arange(images) % 10
    shapes = {"train": (torch.Size((images, 3, size, size)), labels),
              "val": (torch.Size((100, 3, size, size)), labels[:100]),
              "test": (torch.Size((100, 3, size, size)), labels[:100])}
    facts = datasets.DataSet("synthetic", None, None, None, 10, 3, size, (0.5,) * 3, (0.25,) * 3)

    def fill(split: str, out: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(0)
        for start in range(0, len(out), 4096):
            chunk = out[start:start + 4096]
            chunk.copy_(torch.randint(0, 256, chunk.shape, dtype=torch.uint8, generator=g))

    datasets.write_cache(path, facts, shapes, fill)


def one_epoch(split: tuple[torch.Tensor, torch.Tensor], batch_size: int = 256) -> float:
    """Images/s of one shuffled epoch of normalised batches (the training loop's data path, no model)."""
    data = odn.Data(split, split, mean=(0.5,) * 3, std=(0.25,) * 3)
    start, seen = time.perf_counter(), 0
    for xb, _ in odn.batches(*split, batch_size, data, torch.Generator().manual_seed(0)):
        seen += len(xb)
    return seen / (time.perf_counter() - start)


@app.command()
def decode(images: int = 3000, size: int = 64) -> None:
    """Write `images` PNGs (size×size RGB) into a folder, then time building its cache."""
    from PIL import Image
    with tempfile.TemporaryDirectory() as tmp:
        g = torch.Generator().manual_seed(0)
        for i in range(images):
            folder = Path(tmp) / "train" / f"c{i % 10}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g)
            Image.fromarray(pixels.numpy(), "RGB").save(folder / f"{i}.png")
        start = time.perf_counter()
        datasets.load(f"folder:{tmp}", cache=True)
        built = time.perf_counter() - start
        start = time.perf_counter()
        datasets.load(f"folder:{tmp}", cache=True)
        reopened = time.perf_counter() - start
        start = time.perf_counter()
        datasets.load(f"folder:{tmp}")
        in_memory = time.perf_counter() - start
    print(f"{images} PNGs {size}×{size}: cache built in {built:.1f} s ({images / built:.0f} img/s, decode + stats); "
          f"reopened in {reopened:.2f} s (file listing + stat + mapping); in-memory load {in_memory:.1f} s — {machine()}")


@app.command()
def read(images: int = 50000, size: int = 32) -> None:
    """One shuffled epoch from memory and from the mapping, same images."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.safetensors"
        synthetic_cache(path, images, size)
        mapped = datasets.read_cache(path)
        memory = (mapped.train[0].clone(), mapped.train[1].clone())
        first = one_epoch(mapped.train)  # cold: pages come from the file (page cache, just written)
        rates = {"in memory": one_epoch(memory), "mapped": one_epoch(mapped.train)}
    print(f"{images} images 3×{size}×{size}, batch 256: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in rates.items())
          + f" (mapped, first epoch {first:,.0f} img/s) — {machine()}")


@app.command()
def capped(gib: float = 2.0, cap_mib: int = 600, size: int = 64) -> None:
    """An epoch over a cache of `gib` GiB in a child process whose cgroup may hold `cap_mib` MiB."""
    group = Path("/sys/fs/cgroup/memory/odn-bench-cache")
    try:
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(cap_mib * 2**20))
    except OSError as error:
        print(f"capped: needs a writable cgroup-v1 memory controller ({error.strerror}); skipped")
        raise typer.Exit(1)
    images = int(gib * 2**30 / (3 * size * size))
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        path = Path(tmp) / "cache.safetensors"
        synthetic_cache(path, images, size)
        # drop the file from the page cache: pages the writer left there are charged to this process's
        # group, and the child would map them without ever touching its own cap
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        # one sequential pass over the whole cache (evaluation order: every page is touched once), then
        # 200 shuffled training batches (random access: the worst case for a mapping under a cap)
        code = ("import resource, sys, time, torch; sys.path.insert(0, %r); import bench_cache, data, odn;"
                "d = data.read_cache(__import__('pathlib').Path(%r)); x, y = d.train;"
                "t = time.perf_counter(); n = sum(len(b) for b, _ in odn.batches(x, y, 1024, odn.Data(d.train, d.val,"
                " mean=d.mean, std=d.std))); sequential = n / (time.perf_counter() - t);"
                "g = torch.Generator().manual_seed(0); t = time.perf_counter(); it = odn.batches(x, y, 256,"
                " odn.Data(d.train, d.val, mean=d.mean, std=d.std), g); m = sum(len(next(it)[0]) for _ in range(200));"
                "print(sequential, m / (time.perf_counter() - t), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
                ) % (str(Path(__file__).parent), str(path))
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                                 preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
        out, _ = child.communicate()
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        cache_gib = path.stat().st_size / 2**30
    group.rmdir()
    if child.returncode:
        print(f"capped: the child failed (exit {child.returncode}; killed by the cap?)")
        raise typer.Exit(1)
    sequential, shuffled, max_rss_kib = out.split()
    print(f"cache {cache_gib:.2f} GiB ({images:,} images 3×{size}×{size}) under a {cap_mib} MiB cap: a sequential "
          f"pass over all of it at {float(sequential):,.0f} img/s, 200 shuffled batches of 256 at {float(shuffled):,.0f} "
          f"img/s; peak RSS {int(max_rss_kib) / 1024:.0f} MiB, cgroup peak {peak / 2**20:.0f} MiB (page cache "
          f"included) — {machine()}")


if __name__ == "__main__":
    app()
