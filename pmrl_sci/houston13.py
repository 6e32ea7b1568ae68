"""Houston 2013 end to end: ``python -m pmrl_sci.houston13 [--data-dir DIR] [options]``.

Hyperspectral + LiDAR + class label, three modalities aligned with PMRL (or GRAM / VAST), classified by retrieval
(nearest class embedding to the averaged HSI and LiDAR embeddings, as in the paper) and by a supervised MLP head.
Without ``--data-dir`` a synthetic scene in the real release's formats is generated and used (a few minutes on
2 CPU cores). Writes a run folder with the resolved config, ``metrics.jsonl``, ``results.json``, the confusion
matrix and the classification map. Rerunning with the same ``--out`` and the same options resumes: finished
seeds are not run again and an interrupted one continues from its last finished epoch; other options are refused.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from pmrl_sci.config import HelpFormatter, parse_dataclass_config
from pmrl_sci.options import add_objective_options, add_run_options, add_training_options, front_end
from pmrl_sci.runs import default_run_dir, is_rank_zero
from pmrl_sci.tasks.houston13 import HEADS, HOUSTON13_MODALITIES, OBJECTIVES, Houston13Config, run_houston13


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (every field of :class:`Houston13Config`; ``--help`` explains each)."""
    d = Houston13Config()
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.houston13", description=__doc__,
                                formatter_class=HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data-dir", default=d.data_dir,
                      help="folder with the GRSS DFC 2013 release (2013_IEEE_GRSS_DF_Contest_CASI.tif, ..._LiDAR.tif, "
                           "..._Samples_TR.txt, ..._Samples_VA.txt; or label GeoTIFFs; or HSI.mat, LiDAR.mat, "
                           "TRLabel.mat, TSLabel.mat). Omitted: generate and use the embedded synthetic scene")
    data.add_argument("--synthetic-rows", type=int, default=d.synthetic_rows, help="rows of the synthetic scene")
    data.add_argument("--synthetic-cols", type=int, default=d.synthetic_cols, help="columns of the synthetic scene")
    data.add_argument("--synthetic-seed", type=int, default=d.synthetic_seed, help="seed of the synthetic scene")
    data.add_argument("--patch-size", type=int, default=d.patch_size, help="odd side of the patches around a pixel")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction,
                      help="stratified fraction of the TRAINING pixels held out for model selection / early stopping")

    model = p.add_argument_group("model")
    model.add_argument("--embed-dim", type=int, default=d.embed_dim, help="embedding dimension of every modality")
    model.add_argument("--head", choices=(*HEADS, "both"), default=d.head,
                       help="retrieval: nearest class embedding (the paper's); mlp: supervised classifier on the "
                            "fused embedding trained with cross-entropy beside the alignment loss; both: report "
                            "both (top-level metrics are the retrieval head's)")
    model.add_argument("--label-embedding", choices=("learned", "text"), default=d.label_embedding,
                       help="label modality: learnable class embeddings, or the class names through the text model")
    model.add_argument("--text-model", default=d.text_model,
                       help="text model for --label-embedding text (local path; default the shipped MiniLM)")
    model.add_argument("--text-template", default=d.text_template,
                       help="format string applied to each class name before the text model, e.g. 'an aerial "
                            "image of {}'")
    model.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                       help="GRAM/VAST: label smoothing of the contrastive cross-entropy")

    add_objective_options(p, d, objectives=OBJECTIVES, helps={
        "objective": "alignment objective over {hsi, lidar, label}",
        "anchor": f"GRAM/VAST anchor modality, one of {list(HOUSTON13_MODALITIES)}; unset: label",
        "classification_weight": "weight of the MLP head's cross-entropy (0 for the 'w/o classification' ablation)"})

    train = add_training_options(p, d, helps={
        "patience": "early stopping: stop after this many epochs without validation improvement of every head; "
                    "0: off",
        "lr": "AdamW learning rate (betas 0.9, 0.98; linear warm-up, then cosine decay)",
        "weight_decay": "AdamW (decoupled) weight decay"})
    train.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="evaluation batch size")
    train.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--map-tile-rows", type=int, default=d.map_tile_rows,
                       help="rows per strip when classifying the whole scene for the map")
    add_run_options(p, d, prefix="runs/houston13")
    return p


def parse_config(argv: Sequence[str] | None = None) -> Houston13Config:
    """Parse the command line (and ``-c config.yaml``) into a :class:`Houston13Config`."""
    return parse_dataclass_config(build_parser(), Houston13Config, argv)


@front_end
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the Houston 2013 pipeline and return the results (as written to ``results.json``).

    Bad input (options, data files) ends with ``error: <message>`` and exit code 2.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    """
    cfg = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if cfg.out is None:
        cfg.out = str(default_run_dir("houston13"))
    results = run_houston13(cfg)
    if not is_rank_zero():  # under torchrun only rank 0 prints the summary
        return results
    primary = results["primary_head"]
    summary = ", ".join(f"{k.upper()} {results[k]['mean']:.4f} +- {results[k]['std']:.4f}"
                        for k in ("oa", "aa", "kappa"))
    print(f"Houston 2013 ({results['dataset']}, {cfg.objective}, {primary} head): {summary}")
    for name, head in results["heads"].items():
        if name != primary:
            print(f"  {name} head: OA {head['oa']['mean']:.4f}, AA {head['aa']['mean']:.4f}, "
                  f"kappa {head['kappa']['mean']:.4f}")
    print(f"run folder: {results['run_dir']}")
    return results


if __name__ == "__main__":
    main()
