"""The retrieval front end ``python -m pmrl_sci.retrieval`` (``main(argv)``): options, one fast end-to-end run on the
embedded scenes, bad input (exit 2), the sweep hook, torchrun against one process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from retrieval_manifests import feature_manifest

from pmrl_sci.retrieval import main
from pmrl_sci.training import epoch_callback

torch.set_num_threads(1)

_TINY = ["--n-train", "40", "--n-test", "16", "--image-size", "16", "--width", "4", "--num-blocks", "2",
         "--n-mels", "16", "--embed-dim", "16", "--batch-size", "16", "--threads", "1", "--no-progress"]


def test_help_lists_the_shared_options(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--seed ", "--seeds", "--no-progress", "--out", "-c", "--epochs", "--patience", "--lr",
                   "--objective", "--tau1", "--no-instance-term", "--rank", "--temperature", "--anchor",
                   "--align-weight", "--tensorboard", "--device", "--lambda2", "--eval-every"):
        assert option in text, option
    assert "--classification-weight" not in text  # retrieval has no classification term


def test_end_to_end_on_the_embedded_scenes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = [*_TINY, "--modalities", "vision", "audio", "text", "--epochs", "2", "--missing-rate", "0.2",
            "--data-dir", str(tmp_path / "scenes"), "--out", str(out), "--seed", "3"]
    reported: list[tuple[str, int, dict]] = []
    with epoch_callback(lambda unit, epoch, metrics, max_epochs: reported.append((unit, epoch, dict(metrics)))):
        results = main(argv)
    summary = capsys.readouterr().out
    assert "retrieval on synthetic_scenes (pmrl; 36 train / 4 validation / 16 test; 1 seed(s))" in summary
    assert json.loads((out / "results.json").read_text())["recall"] == results["recall"]
    assert set(results["recall"]) == {"vision->audio", "vision->text", "audio->vision", "audio->text",
                                      "text->vision", "text->audio"}
    assert results["missing"]["rows_with_missing"] > 0  # generated, counted and reported
    # 10% of the 40 training scenes are held out for validation; the 16 test scenes are untouched
    assert (results["n_train"], results["n_val"], results["n_test"]) == (36, 4, 16)
    assert set(results["zero_shot"]["accuracy"]) == {"vision", "audio"}  # the scenes' class names, non-text rows
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["unit"], r["epoch"]) for r in records] == [("seed3", 0), ("seed3", 1)]
    assert "train_im_loss" in records[0] and "train_align_loss" in records[0]
    # the sweep hook: one report per validated epoch, with the recorded validation scores
    assert [(u, e) for u, e, _ in reported] == [("seed3", 0), ("seed3", 1)]
    assert [m["val_mean_R@1"] for _, _, m in reported] == [r["val_mean_R@1"] for r in records]
    unit = results["units"][0]
    scores = [r["val_mean_R@1"] for r in records]
    assert results["validation"]["mean"] == unit["best_val"] == max(scores)
    assert unit["best_epoch"] == scores.index(max(scores)) and results["validation"]["rows"] == 4
    assert results["mean_R@1"]["values"] == [unit["mean_R@1"]] and (out / "recall_heatmap.png").is_file()
    done_time = (out / "done" / "seed3.json").stat().st_mtime_ns
    again = main(argv)  # a finished run is reused, not retrained
    assert again["units"] == results["units"] and (out / "done" / "seed3.json").stat().st_mtime_ns == done_time


def _media_manifest(folder, rate: int = 8000):
    """Four rows of PNG images and WAV audio at ``rate`` Hz."""
    from PIL import Image
    from scipy.io import wavfile

    from pmrl_sci.data.manifest import write_manifest

    rows = []
    for i in range(4):
        (folder / "img").mkdir(parents=True, exist_ok=True)
        (folder / "wav").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / "img" / f"{i}.png")
        wavfile.write(folder / "wav" / f"{i}.wav", rate, np.zeros(rate // 10, np.int16))
        rows.append({"id": str(i), "vision": f"img/{i}.png", "audio": f"wav/{i}.wav"})
    return write_manifest(rows, folder / "manifest.jsonl")


def _exit_message(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_input_exits_2_naming_what_is_wrong(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    run = ["--epochs", "1", "--no-progress", "--device", "cpu", "--out", str(tmp_path / "run")]
    manifest = _media_manifest(tmp_path / "media")
    err = _exit_message(capsys, ["--manifest", str(tmp_path / "absent.jsonl"), *run])
    assert "error: --manifest" in err and "absent.jsonl does not exist" in err
    err = _exit_message(capsys, ["--manifest", str(manifest), "--modalities", "vision", "smell", *run])
    assert "error:" in err and "smell" in err
    err = _exit_message(capsys, ["--manifest", str(manifest), "--sample-rate", "16000", *run])
    assert "error:" in err and "manifest.jsonl, row 1, column 'audio'" in err and "0.wav is sampled at 8000 Hz" in err
    (tmp_path / "media" / "img" / "2.png").write_bytes(b"not an image")
    err = _exit_message(capsys, ["--manifest", str(manifest), "--sample-rate", "8000", *run])
    assert "error:" in err and "row 3, column 'vision'" in err and "2.png: cannot identify image file" in err
    (tmp_path / "media" / "img" / "2.png").unlink()
    err = _exit_message(capsys, ["--manifest", str(manifest), "--sample-rate", "8000", *run])
    assert "error:" in err and "row 3" in err and "2.png does not exist" in err
    features = feature_manifest(tmp_path / "features", n_train=12, n_test=4)
    err = _exit_message(capsys, ["--manifest", str(features), "--zero-shot-labels", str(tmp_path / "nope.txt"), *run])
    assert "error: --zero-shot-labels" in err and "nope.txt does not exist" in err
    (tmp_path / "labels.txt").write_text("c0\nc1\n")
    err = _exit_message(capsys, ["--manifest", str(features), "--zero-shot-labels", str(tmp_path / "labels.txt"), *run])
    assert "error: --zero-shot-labels" in err and "needs a text modality" in err
    err = _exit_message(capsys, ["--manifest", str(features), "--anchor", "z_features", *run])
    assert "error: --anchor 'z_features' is not among the modalities" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing was trained
    with pytest.raises(SystemExit) as info:
        main(["--few-shot", "0", *run])
    assert info.value.code == 2 and "--few-shot must be >= 1" in capsys.readouterr().err


def test_pruning_callback_stops_the_run(tmp_path) -> None:
    class Pruned(Exception):
        pass

    def prune(unit: str, epoch: int, metrics, max_epochs) -> None:
        raise Pruned(f"{unit} {epoch} {metrics['val_mean_R@1']}")

    manifest = feature_manifest(tmp_path / "data", n_train=24, n_test=8)
    out = tmp_path / "run"
    with epoch_callback(prune), pytest.raises(Pruned, match="seed0 0 "):
        main(["--manifest", str(manifest), "--embed-dim", "8", "--epochs", "3", "--no-progress", "--device", "cpu",
              "--out", str(out)])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1 and not (out / "results.json").exists()


@pytest.mark.slow
def test_default_scenes_are_learnable(tmp_path, monkeypatch) -> None:
    """A longer run: cross-modal retrieval well above chance (R@10 = 10 / n_test) on the embedded scenes.

    VAST learns this from scratch; PMRL at the paper's temperatures does not (README, "What we measured").
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    results = main(["--modalities", "vision", "depth", "text", "--n-train", "300", "--n-test", "100",
                    "--objective", "vast", "--epochs", "15", "--data-dir", str(tmp_path / "scenes"),
                    "--out", str(tmp_path / "run"), "--no-progress"])
    assert results["mean_R@10"]["mean"] > 2 * 10 / 100


# -- torchrun: two gloo ranks on CPU against one process --------------------------------------------------------

def test_torchrun_two_cpu_ranks_match_one_process(tmp_path, monkeypatch) -> None:
    """2 gloo ranks (DDP, global batch 9 shared 5 + 4) train like one process on the same global batches."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("PMRL_SCI_CACHE", str(tmp_path / "cache"))
    manifest = feature_manifest(tmp_path / "data", class_weight=1.0, instance_weight=0.7, noise=0.3)
    args = ["--manifest", str(manifest), "--embed-dim", "8", "--batch-size", "9", "--epochs", "3", "--threads", "1",
            "--device", "cpu", "--lr", "3e-3", "--seed", "1", "--no-progress"]
    single = main([*args, "--out", str(tmp_path / "single")])
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",  # own free port
               "-m", "pmrl_sci.retrieval", *args, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for _attempt in range(3):  # the machine is shared: retry only when another process took the rendezvous port
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode == 0 or "address already in use" not in done.stderr.lower():
            break
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("retrieval on manifest") == 1  # rank 0 alone prints the summary
    results = json.loads((out / "results.json").read_text())
    assert results["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch_size": 9}
    assert (results["n_train"], results["n_val"], results["n_test"]) == (43, 5, 16) == \
        (single["n_train"], single["n_val"], single["n_test"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]  # rank 0 alone writes: one record per epoch
    # ranks see different local batches, so float sums differ in the last bits: losses agree to 1e-4, and a recall
    # (a count of rank comparisons) may flip one near-tie: at most one query of the 6 pairs of 5 / 16 rows
    for mine, ref in zip(records, reference, strict=True):  # global-batch losses, averaged over ranks
        for key in ("train_loss", "train_align_loss", "train_align_alignment", "train_align_instance",
                    "train_im_loss"):
            assert mine[key] == pytest.approx(ref[key], abs=1e-4), (mine["epoch"], key)
        for key in ("val_mean_R@1", "val_mean_R@5"):
            assert mine[key] == pytest.approx(ref[key], abs=1 / 30 + 1e-9), (mine["epoch"], key)
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.5  # it trained
    assert results["mean_R@1"]["mean"] == pytest.approx(single["mean_R@1"]["mean"], abs=1 / 96 + 1e-9)
    assert results["recall"].keys() == single["recall"].keys() and len(results["recall"]) == 6
    assert (out / "checkpoints" / "seed1.pt").is_file() and not list(out.glob("*.tmp*"))
