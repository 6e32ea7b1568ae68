"""Training throughput (samples per second) with 1 and 2 data-parallel processes, on CPU and on GPUs when present.

Each configuration spawns its ranks (``torch.multiprocessing``, gloo on CPU, nccl on GPUs, the same code path as
``torchrun``), trains a model with the PMRL objective gathered across ranks under DDP for ``--steps`` timed
steps of the same *global* batch (after ``--warmup`` steps), and reports global samples per second and the
ratio to one process. Models: ``synthetic`` (three MLP encoders on random features) or ``houston`` (the Houston
2013 HSI and LiDAR patch CNNs and the class embedding, on random patches). On CPU each rank uses ``--threads``
threads, so N ranks use N times the cores of one: the ratio measures scaling, not a free speed-up.

    python benchmarks/bench_distributed.py --threads 1
    python benchmarks/bench_distributed.py --model houston --batch 64 --steps 10 --threads 1
    python benchmarks/bench_distributed.py --procs 1 2 4 --device cuda       # GPUs (nccl), when present
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _build(args: argparse.Namespace) -> tuple[nn.Module, Callable[[int, torch.device], dict[str, torch.Tensor]]]:
    """The model and a function drawing this rank's inputs for a local batch of ``n``."""
    from pmrl_sci.training import MultimodalModel

    if args.model == "synthetic":
        encoders = {m: nn.Sequential(nn.Linear(args.features, args.hidden), nn.GELU(),
                                     nn.Linear(args.hidden, args.hidden), nn.GELU(), nn.Linear(args.hidden, args.dim))
                    for m in ("a", "b", "c")}

        def inputs(n: int, device: torch.device) -> dict[str, torch.Tensor]:
            return {m: torch.randn(n, args.features, device=device) for m in encoders}

        return MultimodalModel(encoders), inputs
    from pmrl_sci.registry import build_encoder
    from pmrl_sci.tasks.houston13 import ClassEmbedding

    bands, patch = 144, args.patch
    model = MultimodalModel({
        "hsi": build_encoder("hsi_cnn", in_bands=bands, embed_dim=args.dim, patch_size=patch),
        "lidar": build_encoder("lidar_cnn", in_channels=1, embed_dim=args.dim, patch_size=patch),
        "label": ClassEmbedding(15, args.dim),
    })

    def patches(n: int, device: torch.device) -> dict[str, torch.Tensor]:
        return {"hsi": torch.randn(n, bands, patch, patch, device=device),
                "lidar": torch.randn(n, 1, patch, patch, device=device),
                "label": torch.randint(0, 15, (n,), device=device)}

    return model, patches


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    from pmrl_sci.distributed import all_reduce_mean, barrier, distributed_context, shard_range, wrap_ddp
    from pmrl_sci.objectives import build_objective

    with distributed_context(device=args.device) as info:
        torch.manual_seed(rank)
        model, draw = _build(args)
        model = model.to(info.device)
        net = wrap_ddp(model, info)
        objective = build_objective("pmrl")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        local = len(shard_range(args.batch, world, rank))
        batches = [draw(local, info.device) for _ in range(4)]

        def step(i: int) -> float:
            out = objective(net(batches[i % len(batches)]))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            return float(out["loss"].detach())

        for i in range(args.warmup):
            step(i)
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        barrier()
        start = time.perf_counter()
        for i in range(args.steps):
            loss = step(i)
        if info.device.type == "cuda":
            torch.cuda.synchronize()
        barrier()
        seconds = time.perf_counter() - start
        mean_loss = float(all_reduce_mean(loss))
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": seconds, "loss": mean_loss}))


def measure(world: int, args: argparse.Namespace) -> dict[str, float]:
    """Spawn ``world`` ranks and return their timing (global samples per second)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_worker, args=(world, _free_port(), args, out), nprocs=world, join=True)
        result = json.loads(Path(out).read_text())
    result["samples_per_s"] = args.steps * args.batch / result["seconds"]
    return result


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    """Run the configurations and print a table (returned as a list of rows)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("synthetic", "houston"), default="synthetic")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="numbers of processes to compare")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (CUDA when present, then also CPU)")
    p.add_argument("--batch", type=int, default=256, help="global batch size (split across ranks)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank")
    p.add_argument("--features", type=int, default=512, help="synthetic: input features per modality")
    p.add_argument("--hidden", type=int, default=1024, help="synthetic: MLP width")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension")
    p.add_argument("--patch", type=int, default=11, help="houston: patch side")
    args = p.parse_args(argv)
    devices = ["cpu"]
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices = ["cuda"] + (["cpu"] if args.device == "auto" else [])
    rows: list[dict[str, object]] = []
    print(f"model {args.model}, global batch {args.batch}, {args.steps} timed steps, {args.threads} thread(s)/rank")
    for device in devices:
        args.device = device
        base = None
        for world in args.procs:
            if device == "cuda" and world > torch.cuda.device_count():
                print(f"{device}: {world} processes skipped ({torch.cuda.device_count()} GPU(s))")
                continue
            result = measure(world, args)
            base = base or result["samples_per_s"]
            ratio = result["samples_per_s"] / base
            rows.append({"device": device, "procs": world, **result, "ratio": ratio})
            print(f"{device:>4} x{world}: {result['samples_per_s']:9.1f} samples/s  ratio {ratio:5.2f}  "
                  f"(loss {result['loss']:.4f})", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
