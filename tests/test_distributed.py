"""Distributed training: samplers, and two gloo ranks on CPU against one process over the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pmrl_sci.distributed import (
    GlobalBatchSampler,
    ShardedSampler,
    average_gradients,
    gather_objects,
    get_world_size,
    global_mean_share,
    init_distributed,
    shard_range,
    wrap_ddp,
)

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- samplers (no process group needed) -----------------------------------------------------------------------

@pytest.mark.parametrize("n,world", [(10, 2), (11, 2), (7, 3), (3, 3)])
def test_sharded_sampler_covers_once_without_padding(n: int, world: int) -> None:
    shards = [list(ShardedSampler(n, num_replicas=world, rank=r, seed=5)) for r in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(n))  # full coverage, no duplicate, no padding
    assert [len(ShardedSampler(n, num_replicas=world, rank=r)) for r in range(world)] == [len(s) for s in shards]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_sampler_set_epoch_changes_the_order_identically_on_every_rank() -> None:
    samplers = [ShardedSampler(40, num_replicas=2, rank=r, seed=3) for r in range(2)]
    epoch0 = [list(s) for s in samplers]
    again = [list(ShardedSampler(40, num_replicas=2, rank=r, seed=3)) for r in range(2)]
    assert epoch0 == again  # the permutation depends on (seed, epoch) only: the same on every rank
    for s in samplers:
        s.set_epoch(1)
    epoch1 = [list(s) for s in samplers]
    assert epoch1 != epoch0 and sorted(epoch1[0] + epoch1[1]) == list(range(40))
    assert list(ShardedSampler(40, num_replicas=2, rank=0, shuffle=False)) == list(range(0, 40, 2))


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (9, 4, 2), (13, 6, 3), (5, 4, 2), (12, 4, 1)])
def test_global_batch_sampler_shares_each_global_batch(n: int, batch: int, world: int) -> None:
    samplers = [GlobalBatchSampler(n, batch, num_replicas=world, rank=r, seed=1) for r in range(world)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        local = [list(s) for s in samplers]
        steps = {len(x) for x in local}
        assert steps == {len(samplers[0])}  # every rank runs the same number of steps
        global_batches = samplers[0].global_batches()
        assert len(global_batches) == len(local[0])
        for t, expected in enumerate(global_batches):
            parts = [local[r][t] for r in range(world)]
            assert all(len(p) >= 1 for p in parts)  # never an empty local batch
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            assert [i for p in parts for i in p] == expected.tolist()  # rank order = global order
        flat = [i for batch_ in global_batches for i in batch_.tolist()]
        assert sorted(flat) == list(range(n))


def test_global_batch_sampler_merges_a_tail_smaller_than_the_world() -> None:
    s = GlobalBatchSampler(9, 4, num_replicas=2, rank=0, shuffle=False)
    assert s.global_batch_sizes() == [4, 5] and len(s) == 2  # 4 + 4 + 1: the lone sample joins the last batch
    assert GlobalBatchSampler(10, 4, num_replicas=2, rank=0).global_batch_sizes() == [4, 4, 2]
    assert GlobalBatchSampler(10, 4, num_replicas=2, rank=1, drop_last=True).global_batch_sizes() == [4, 4]
    with pytest.raises(ValueError, match="smaller than the number of ranks"):
        GlobalBatchSampler(10, 1, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="cannot be shared"):
        GlobalBatchSampler(1, 4, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="rank 2"):
        ShardedSampler(10, num_replicas=2, rank=2)


def test_shard_range_and_single_process_fallbacks() -> None:
    parts = [shard_range(10, 3, r) for r in range(3)]
    assert [list(p) for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert get_world_size() == 1 and gather_objects("x") == ["x"]
    values = torch.tensor([1.0, 2.0, 6.0])
    assert global_mean_share(values) == values.mean()
    info = init_distributed(device="cpu")
    assert not info.distributed and info.world_size == 1 and info.is_main
    layer = torch.nn.Linear(2, 2)
    assert wrap_ddp(layer) is layer
    layer(torch.ones(1, 2)).sum().backward()
    before = layer.weight.grad.clone()
    average_gradients(layer)
    assert torch.equal(layer.weight.grad, before)


def test_init_distributed_rejects_bad_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        init_distributed(device="cpu")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero'"):
        init_distributed(device="cpu")


# -- two gloo ranks against one process ------------------------------------------------------------------------

OBJECTIVES = [("pmrl", {}), ("pmrl", {"sign_aware": False, "rank": 2}), ("gram", {"anchor": "m1"}),
              ("vast", {}), ("vast", {"pairs": "all"}), ("instance_matching", {"embed_dim": 8, "num_modalities": 3})]
N_GLOBAL, IN_DIM = 9, 6


def _global_batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(N_GLOBAL, IN_DIM, generator=g)
    inputs = {f"m{i}": base + 0.8 * torch.randn(N_GLOBAL, IN_DIM, generator=g) for i in range(3)}
    mask = torch.ones(N_GLOBAL, 3, dtype=torch.bool)
    mask[1, 2] = mask[6, 0] = mask[7, 1] = False  # missing modalities on both ranks
    return inputs, mask


def _model() -> torch.nn.Module:
    from pmrl_sci.training import MultimodalModel

    torch.manual_seed(11)
    return MultimodalModel({f"m{i}": torch.nn.Linear(IN_DIM, 8) for i in range(3)})


def _run_objective(name: str, kwargs: dict, rows: slice | None, gather: bool) -> dict[str, object]:
    """Forward + backward of a small model and the objective; returns loss and gradients."""
    from pmrl_sci.objectives import build_objective

    inputs, mask = _global_batch()
    if rows is not None:
        inputs, mask = {k: v[rows] for k, v in inputs.items()}, mask[rows]
    model = _model()
    torch.manual_seed(12)
    objective = build_objective(name, gather="auto" if gather else False, **kwargs)
    net = wrap_ddp(model) if gather else model
    embeddings = net(inputs)
    for value in embeddings.values():
        value.retain_grad()
    torch.manual_seed(13)  # the negative draws of instance matching
    out = objective(embeddings, mask)
    out["loss"].backward()
    if gather:
        average_gradients(objective)
    return {"loss": out["loss"].detach(), "model": {k: p.grad.clone() for k, p in model.named_parameters()},
            "objective": {k: p.grad.clone() for k, p in objective.named_parameters() if p.grad is not None},
            "embeddings": {k: v.grad.clone() for k, v in embeddings.items()}}


def _cross_entropy_errors(rows: slice, world: int) -> dict[str, float]:
    """A per-sample mean under DDP (:func:`global_mean_share`) against one process's mean over the global batch."""
    import torch.nn.functional as F

    from pmrl_sci.distributed import all_reduce_mean

    inputs, _ = _global_batch()
    labels = torch.arange(N_GLOBAL) % 3
    grads, losses = [], []
    for local in (False, True):
        torch.manual_seed(21)
        layer = torch.nn.Linear(IN_DIM, 3)
        if local:
            ddp = wrap_ddp(layer)  # kept alive until backward: its reducer averages the gradients
            loss = global_mean_share(F.cross_entropy(ddp(inputs["m0"][rows]), labels[rows], reduction="none"))
        else:
            loss = F.cross_entropy(layer(inputs["m0"]), labels)
        loss.backward()
        grads.append(layer.weight.grad)
        losses.append(all_reduce_mean(loss) if local else loss.detach())
    return {"loss": float((losses[0] - losses[1]).abs()), "weight": float((grads[0] - grads[1]).abs().max())}


def _objective_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pmrl_sci.distributed import all_reduce_mean, cleanup

    report: dict[str, object] = {}
    try:
        info = init_distributed(device="cpu")
        assert info.distributed and info.backend == "gloo" and info.rank == rank
        part = shard_range(N_GLOBAL)
        rows = slice(part.start, part.stop)  # 5 rows on rank 0, 4 on rank 1: uneven on purpose
        for name, kwargs in OBJECTIVES:
            key = f"{name}{kwargs}"
            single = _run_objective(name, kwargs, None, gather=False)
            multi = _run_objective(name, kwargs, rows, gather=True)
            errors = {"loss": float((all_reduce_mean(multi["loss"]) - single["loss"]).abs())}
            for group in ("model", "objective"):
                assert set(multi[group]) == set(single[group]), (key, group)
                for p in single[group]:
                    errors[f"{group}.{p}"] = float((multi[group][p] - single[group][p]).abs().max())
            for m, grad in single["embeddings"].items():  # W x the global gradient on this rank's rows
                errors[f"emb.{m}"] = float((multi["embeddings"][m] / world - grad[rows]).abs().max())
            report[key] = errors
        report["cross_entropy"] = _cross_entropy_errors(rows, world)
        report["objects"] = gather_objects(rank)
    except Exception:  # noqa: BLE001 - reported to the parent process
        report["error"] = traceback.format_exc()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
        cleanup()


def test_two_gloo_ranks_match_one_process_over_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_objective_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "error" not in report, report.get("error")
        assert report.pop("objects") == [0, 1]
        assert set(report) == {f"{n}{k}" for n, k in OBJECTIVES} | {"cross_entropy"}
        for key, errors in report.items():
            assert any(k.startswith("objective.") for k in errors) or not key.startswith(("gram", "vast")), key
            worst = max(errors, key=errors.get)
            assert errors[worst] < 1e-5, f"rank {rank}, {key}: {worst} differs by {errors[worst]:.2e}"


def test_houston13_under_torchrun_two_cpu_ranks(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "pmrl_sci.houston13", "--synthetic-rows", "24",
               "--synthetic-cols", "48", "--patch-size", "5", "--embed-dim", "16", "--batch-size", "32",
               "--no-progress", "--threads", "1", "--device", "cpu", "--epochs", "2", "--objective", "vast",
               "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["distributed"]["world_size"] == 2 and results["objective"] == "vast"
    seed0 = json.loads((out / "done" / "seed0.json").read_text())
    assert results["oa"]["values"] == [seed0["heads"][results["primary_head"]]["oa"]]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # rank 0 alone writes: one record per epoch
    assert all(np.isfinite(r["train_loss"]) for r in records)
    for name in ("config.yaml", "checkpoints/seed0-retrieval.pt", "checkpoints/seed0-mlp.pt", "confusion_matrix.png",
                 "classification_map.png", "done/seed0.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp*"))
