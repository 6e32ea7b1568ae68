"""Houston 2013 end to end: ``python -m pmrl_sci.houston13 [--data-dir DIR] [options]``.

Hyperspectral + LiDAR + class label, three modalities aligned with PMRL (or GRAM / VAST), classified by retrieval
(nearest class embedding to the averaged HSI and LiDAR embeddings, as in the paper) and by a supervised MLP head.
Without ``--data-dir`` a synthetic scene in the real release's formats is generated and used (a few minutes on
2 CPU cores). Writes a run folder with the resolved config, ``metrics.jsonl``, ``results.json``, the confusion
matrix and the classification map.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from pmrl_sci.tasks.houston13 import Houston13Config, run_houston13

_DEFAULTS = Houston13Config()


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (every field of :class:`Houston13Config`)."""
    d = _DEFAULTS
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.houston13", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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

    model = p.add_argument_group("model and objective")
    model.add_argument("--objective", choices=("pmrl", "gram", "vast"), default=d.objective,
                       help="alignment objective over {hsi, lidar, label}; the label is GRAM's and VAST's anchor")
    model.add_argument("--tau1", type=float, default=d.tau1, help="PMRL: temperature of the singular-value softmax")
    model.add_argument("--tau2", type=float, default=d.tau2, help="PMRL: temperature of the instance-wise term")
    model.add_argument("--lambda1", type=float, default=d.lambda1, help="PMRL: weight of the instance-wise term")
    model.add_argument("--no-sign-aware", dest="sign_aware", action="store_false",
                       help="PMRL: use the paper's sign-blind L_M (sigma_1 is the same when a modality is negated); "
                            "by default the leading value is the energy along the mean embedding, which only "
                            "full, same-sign alignment maximises")
    model.add_argument("--temperature", type=float, default=d.temperature,
                       help="GRAM/VAST: initial (learnable) temperature")
    model.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                       help="GRAM/VAST: label smoothing of the contrastive cross-entropy")
    model.add_argument("--embed-dim", type=int, default=d.embed_dim, help="embedding dimension of every modality")
    model.add_argument("--head", choices=("retrieval", "mlp", "both"), default=d.head,
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
    model.add_argument("--ce-weight", type=float, default=d.ce_weight, help="weight of the MLP head's cross-entropy")

    train = p.add_argument_group("training")
    train.add_argument("--seeds", type=int, default=d.seeds, help="number of seeds (results: mean and std over them)")
    train.add_argument("--seed", type=int, default=d.seed, help="first seed")
    train.add_argument("--epochs", type=int, default=d.epochs, help="maximum training epochs")
    train.add_argument("--patience", type=int, default=d.patience,
                       help="early stopping: epochs without validation improvement (every head) before stopping")
    train.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    train.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="evaluation batch size")
    train.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (linear warm-up, cosine decay)")
    train.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    train.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="fraction of steps of warm-up")
    train.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient-norm clip (0: off)")
    train.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    train.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--map-tile-rows", type=int, default=d.map_tile_rows,
                       help="rows per strip when classifying the whole scene for the map")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--out", default=d.out, help="run folder (default runs/houston13-<date-time>)")
    return p


def parse_config(argv: Sequence[str] | None = None) -> Houston13Config:
    """Parse the command line (and ``-c config.yaml``) into a :class:`Houston13Config`."""
    from pmrl_sci.config import parse_dataclass_config

    return parse_dataclass_config(build_parser(), Houston13Config, argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the Houston 2013 pipeline and return the results (as written to ``results.json``).

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    """
    from pmrl_sci.runs import is_rank_zero

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = parse_config(argv)
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
