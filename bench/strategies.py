"""The research strategies `early` and `carry`, registered into odn.STRATEGIES on import (bench.py imports this).

They left odn.py when it was cut down to the algorithm and its two product strategies (`fast`, `paper`); their
rows in BENCHMARKS.md stay reproducible with `python bench/bench.py strategies --names paper,early,carry`.
- early: the paper's protocol, but a depth stops as soon as its outcome is known (accept at the target; reject
  once a generous projection of its curve stays REJECT_MARGIN below it); fine-tuning continues the phase.
- carry: early, and a new depth keeps the converged weights of the shallower one (only the new block and its
  head come from the warm-up).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # odn.py beside bench/

import odn  # noqa: E402
from odn import DepthNet, Phase, Settings, restart_from_warmup  # noqa: E402

REJECT_MARGIN = 0.005  # reject a depth whose projected best stays this far below the target


def keep_converged(net: DepthNet, depth: int, first: bool, warm: dict, s: Settings) -> float:
    """Keep what the shallower depth learned; only the new block and its head come from warm-up."""
    if first:
        return restart_from_warmup(net, depth, first, warm, s)
    fresh = (f"blocks.{depth - 1}.", f"heads.{depth - 1}.")
    net.load_state_dict({k: v for k, v in warm.items() if k.startswith(fresh)}, strict=False)
    return s.lr / 2


def projected(phase: Phase, s: Settings) -> float:
    """How high a depth's best accuracy could still climb, judged from its own curve: the rate the best rose
    at over the last `patience` epochs, kept up for as long again as the depth has trained. Judged only after
    two patience windows: early on curves climb steeply and noisily."""
    epochs = len(phase.val_curve)
    if epochs <= 2 * s.patience:
        return 1.0  # too early to judge
    gain = phase.best_val - max(phase.val_curve[:-s.patience])
    return phase.best_val + gain / s.patience * epochs


def decided(phase: Phase, s: Settings) -> bool:
    """Stop a search phase as soon as its outcome is known; every other phase by the paper's convergence."""
    if phase.converged or phase.name != "search":
        return phase.converged
    goal = s.target - s.tolerance
    return phase.best_val >= goal or projected(phase, s) < goal - REJECT_MARGIN


odn.STRATEGIES.setdefault("early", (restart_from_warmup, decided, None))
odn.STRATEGIES.setdefault("carry", (keep_converged, decided, None))
