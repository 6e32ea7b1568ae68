"""Forward + backward time and peak memory of the PMRL objective against a floor and the reference routes.

Routes, on the same inputs in one run:

* ``floor``: no decomposition at all: the same row normalisation, a k-way softmax (over z^m . mean) and the
  same B x B InfoNCE (over the normalised mean); what any PMRL-like loss costs at least.
* ``pmrl``: this kit's objective in the paper's form (k x k Gram + eigh, custom backward).
* ``pmrl_sa``: the sign-aware form (``sign_aware=True``, the front ends' default): the same Gram matrix, one
  more eigendecomposition, of the (k-1) x (k-1) residual Gram matrix.
* ``ref_full``: the reference implementation's route, ``torch.linalg.svd(full_matrices=True)`` on
  [B, d, k] with the sign of u1 left to the solver, then the same L_M + L_M'.
* ``ref_thin``: the same with ``full_matrices=False``.
* ``vast``: anchored pairwise InfoNCE (k - 1 pairs).
* ``gram``: GRAM's anchored volume contrastive loss.

Times are medians of at least ``--repeats`` rounds (more, up to 200, until they take ``--min-time``
seconds) after a warm-up, the routes taking turns in each round;
ratios are route / floor in the same run (``--target`` marks pmrl and pmrl_sa ratios above it with
``!``). Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident-set growth
of a fresh spawned process that runs one forward + backward (Linux).

    python benchmarks/bench_objectives.py --threads 2
    python benchmarks/bench_objectives.py --batch 256 --dim 512 --k 4   # one configuration
    python benchmarks/bench_objectives.py --routes pmrl pmrl_sa --no-memory   # the floor ratios alone
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from pmrl_sci.objectives import build_objective
from pmrl_sci.objectives._common import stack_modalities
from pmrl_sci.spectral import normalize_rows


def reference_pmrl_loss(z: torch.Tensor, full_matrices: bool, tau1: float = 0.05, tau2: float = 0.1) -> torch.Tensor:
    """The reference code's route: SVD of Z = [B, d, k], sign of u1 left to the solver."""
    u, s, _ = torch.linalg.svd(z.transpose(1, 2), full_matrices=full_matrices)
    align = F.cross_entropy(s / tau1, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
    u1 = u[:, :, 0]
    instance = F.cross_entropy(u1 @ u1.T / tau2, torch.arange(z.shape[0], device=z.device))
    return align + instance


def floor_loss(embeddings: dict[str, torch.Tensor], tau1: float = 0.05, tau2: float = 0.1) -> torch.Tensor:
    """No decomposition: row normalisation, a k-way softmax and the B x B InfoNCE PMRL also computes."""
    _, z, _ = stack_modalities(embeddings)
    mean = z.mean(dim=1)
    logits = torch.einsum("bkd,bd->bk", z, mean) / tau1
    align = F.cross_entropy(logits, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
    u = normalize_rows(mean)
    instance = F.cross_entropy(u @ u.T / tau2, torch.arange(z.shape[0], device=z.device))
    return align + instance


def make_routes(k: int) -> dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]:
    pmrl = build_objective("pmrl")
    pmrl_sign_aware = build_objective("pmrl", sign_aware=True)
    vast = build_objective("vast", pairs="anchored")
    gram = build_objective("gram")

    def stacked(emb: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([F.normalize(v, dim=-1) for v in emb.values()], dim=1)

    return {
        "floor": floor_loss,
        "pmrl": lambda emb: pmrl(emb)["loss"],
        "pmrl_sa": lambda emb: pmrl_sign_aware(emb)["loss"],
        "ref_full": lambda emb: reference_pmrl_loss(stacked(emb), True),
        "ref_thin": lambda emb: reference_pmrl_loss(stacked(emb), False),
        "vast": lambda emb: vast(emb)["loss"],
        "gram": lambda emb: gram(emb)["loss"],
    }


def _inputs(batch: int, dim: int, k: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"m{i}": torch.randn(batch, dim, generator=g).to(device).requires_grad_() for i in range(k)}


def _step(route: Callable, emb: dict[str, torch.Tensor]) -> None:
    for value in emb.values():
        value.grad = None
    route(emb).backward()


def time_routes(routes: dict[str, Callable], emb: dict[str, torch.Tensor], repeats: int,
                device: torch.device, min_time: float = 0.0) -> dict[str, float]:
    """Median fwd+bwd seconds per route; the routes take turns in every round, so load changes hit all alike.

    At least ``repeats`` rounds, more (up to 200) until the rounds take about ``min_time`` seconds.
    """
    start = time.perf_counter()
    for route in routes.values():
        _step(route, emb)  # warm-up
    one_round = max(time.perf_counter() - start, 1e-6)
    rounds = max(repeats, min(200, int(min_time / one_round)))
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(rounds):
        for name, route in routes.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            _step(route, emb)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child_peak_memory(route_name: str, batch: int, dim: int, k: int, threads: int) -> float:
    """Run in a fresh (spawned) process: resident-set growth of one forward + backward, in bytes."""
    torch.set_num_threads(threads)
    route = make_routes(k)[route_name]
    emb = _inputs(batch, dim, k, torch.device("cpu"))
    with open("/proc/self/clear_refs", "w") as handle:  # reset the peak-RSS mark (VmHWM) to the current RSS
        handle.write("5")
    base = _rss_bytes()
    _step(route, emb)
    return float(max(_peak_rss_bytes() - base, 0))


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory(route_name: str, route: Callable, emb: dict[str, torch.Tensor], device: torch.device,
                threads: int) -> float:
    """Peak extra memory (bytes) of one forward + backward.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the peak resident-set growth measured in a fresh spawned
    process (a forked one can hang in OpenMP), so earlier measurements do not hide this one's peak.
    """
    batch, dim = next(iter(emb.values())).shape
    k = len(emb)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(route, emb)
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_child_peak_memory, route_name, batch, dim, k, threads).result()


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--dim", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds at least")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="more rounds (up to 200) until a configuration's rounds take about this many seconds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or all (cpu then cuda when present)")
    parser.add_argument("--max-full-svd-bytes", type=float, default=4e9,
                        help="skip ref_full where its d x d matrices alone would exceed this many bytes")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--routes", nargs="+", default=None,
                        help="time only these routes (floor is always timed; default: all)")
    parser.add_argument("--target", type=float, default=1.3, help="flag pmrl / pmrl_sa ratios above this")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    rows = []
    names = [n for n in make_routes(2) if args.routes is None or n == "floor" or n in args.routes]
    print(f"torch {torch.__version__}, {args.threads} CPU threads; time = median fwd+bwd of >= {args.repeats} rounds; "
          f"(x) = route / floor; ! = pmrl or pmrl_sa above {args.target}x")
    header = "| device | B | d | k | " + " | ".join(f"{r} ms (x)" for r in names)
    header += "" if args.no_memory else " | " + " | ".join(f"{r} MB" for r in names)
    print(header + " |")
    print("|" + "---|" * (4 + len(names) * (1 if args.no_memory else 2)))
    for device_name in devices:
        device = torch.device(device_name)
        for dim in args.dim:
            for k in args.k:
                routes = {n: route for n, route in make_routes(k).items() if n in names}
                for module in routes.values():
                    getattr(module, "to", lambda *_: None)(device)
                for batch in args.batch:
                    emb = _inputs(batch, dim, k, device)
                    timed = {name: route for name, route in routes.items()
                             if name != "ref_full" or batch * dim * dim * 4 <= args.max_full_svd_bytes}
                    times = dict.fromkeys(routes, float("nan")) | time_routes(timed, emb, args.repeats, device,
                                                                              args.min_time)
                    mems = {name: float("nan") if args.no_memory or name not in timed
                            else peak_memory(name, route, emb, device, args.threads) for name, route in routes.items()}
                    base = times["floor"]
                    cells = []
                    for n in routes:
                        if times[n] != times[n]:
                            cells.append("skipped")
                            continue
                        flag = "!" if n in ("pmrl", "pmrl_sa") and times[n] / base > args.target else ""
                        cells.append(f"{times[n] * 1e3:.2f} ({times[n] / base:.2f}{flag})")
                    line = f"| {device_name} | {batch} | {dim} | {k} | " + " | ".join(cells)
                    if not args.no_memory:
                        line += " | " + " | ".join(f"{mems[n] / 2**20:.1f}" if mems[n] == mems[n] else "-"
                                                   for n in routes)
                    print(line + " |", flush=True)
                    rows.append({"device": device_name, "batch": batch, "dim": dim, "k": k,
                                 "time_s": times, "peak_bytes": mems})
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
