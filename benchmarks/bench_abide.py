"""ABIDE pipeline throughput: preprocessing (cold and cached) and training time per epoch.

Generates an ABIDE-like cohort in the real formats (``--subjects``, default 871 as in the quality-checked ABIDE I
cohort, CC200: 200 ROIs), then measures, in one run:

* preprocessing, cold: phenotype + QC filter, reading every ``.1D`` file, Pearson and partial correlation,
  FreeSurfer tables, text embeddings (subjects per second), with an empty cache;
* preprocessing, cached: the same call again (the cache hit), and the ratio cold / cached;
* training: one epoch over the BrainNetTF split's training part (70 %) for each objective, and the ratio to
  the epoch with cross-entropy alone (``none``), i.e. the cost of the alignment term.

    python benchmarks/bench_abide.py --threads 2
    python benchmarks/bench_abide.py --subjects 200 --objectives none pmrl   # a quicker look
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=871)
    parser.add_argument("--sites", type=int, default=17)
    parser.add_argument("--atlas", default="cc200")
    parser.add_argument("--objectives", nargs="+", default=["none", "vast", "gram", "pmrl"])
    parser.add_argument("--fmri-channels", default="correlation", choices=["correlation", "partial", "both"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated cohort here (default: temp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pmrl_sci.data.abide.cohort import load_abide_cohort
    from pmrl_sci.data.abide.generator import generate_abide_like
    from pmrl_sci.data.splits import bnt_split
    from pmrl_sci.runs import RunFolder
    from pmrl_sci.tasks.abide import AbideConfig, train_unit

    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        start = time.perf_counter()
        root = generate_abide_like(work / "cohort", n_subjects=args.subjects, n_sites=args.sites, atlas=args.atlas)
        generate_s = time.perf_counter() - start
        cache = work / "cache"
        timings = {}
        for label in ("cold", "cached"):
            start = time.perf_counter()
            cohort = load_abide_cohort(root, atlas=args.atlas, freesurfer_dir=root / "freesurfer", cache_dir=cache,
                                       progress=False)
            timings[label] = time.perf_counter() - start
        n = len(cohort)
        print(f"torch {torch.__version__}, {args.threads} threads; cohort: {n} subjects after QC "
              f"({args.subjects} generated in {generate_s:.1f} s), {cohort.fmri.shape[-1]} ROIs")
        print("| step | seconds | subjects/s | ratio |")
        print("|---|---|---|---|")
        for label in ("cold", "cached"):
            print(f"| preprocessing, {label} | {timings[label]:.2f} | {n / timings[label]:.1f} | "
                  f"{timings['cold'] / timings[label]:.1f} |")
        train, val, test = bnt_split(cohort.labels, cohort.sites, seed=0)
        parts = {"train": train, "val": val, "test": test}
        epoch_s = {}
        for i, objective in enumerate([args.objectives[0], *args.objectives]):  # the first run warms up
            # a folder per run: a unit trained again in the same folder would resume from its checkpoint
            config = AbideConfig(objective=objective, epochs=1, batch_size=args.batch_size, progress=False,
                                 fmri_channels=args.fmri_channels, out=str(work / f"run{i}_{objective}"))
            config = dataclasses.replace(config, modalities=["fmri", "smri", "text"])
            run = RunFolder(config.out)
            start = time.perf_counter()
            train_unit(config, cohort, parts, 0, "bench", run, torch.device("cpu"))
            epoch_s[objective] = time.perf_counter() - start
        base = epoch_s.get("none", next(iter(epoch_s.values())))
        for objective, seconds in epoch_s.items():
            print(f"| train 1 epoch + eval, {objective} ({len(train)} train subjects) | {seconds:.1f} | "
                  f"{len(train) / seconds:.1f} | {seconds / base:.2f} |")
        return {"subjects": n, "preprocessing_s": timings, "epoch_s": epoch_s, "train_subjects": int(len(train))}


if __name__ == "__main__":
    main()
