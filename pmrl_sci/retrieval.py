"""Any-modality retrieval: ``python -m pmrl_sci.retrieval [--manifest FILE] [--modalities vision audio text] ...``.

Trains encoders for the chosen modalities with PMRL (or GRAM / VAST), plus the instance-matching term
(weight ``--lambda2``, 0.1 as in the paper's retrieval setting), and evaluates R@1, R@5, R@10 and the
median rank for every ordered pair of modalities (``results.json`` ``"recall"`` keyed by
``"query->gallery"``, and a heat-map PNG) on the test rows, once, with the epoch of best validation mean R@1
(``--val-fraction`` of the training rows are held out). Under ``torchrun --nproc-per-node N -m pmrl_sci.retrieval``
it trains with DistributedDataParallel (``--batch-size`` is the global batch; rank 0 writes). ``--few-shot N``
trains on N examples per class (N instances when rows have no label); ``--zero-shot-labels FILE`` classifies
each non-text modality by retrieval against the label texts. Without ``--manifest`` the embedded synthetic
scenes (vision, depth, touch, audio, caption) are generated and used; the default run takes a few minutes
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from pmrl_sci.tasks.retrieval import RetrievalConfig, run_retrieval

_DEFAULTS = RetrievalConfig()


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (the fields of :class:`RetrievalConfig`)."""
    d = _DEFAULTS
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.retrieval", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--manifest", default=d.manifest,
                      help="JSON Lines or CSV manifest (one row per instance, one column per modality; see "
                           "pmrl_sci.data.manifest). Omitted: the embedded synthetic scenes")
    data.add_argument("--modalities", nargs="+", default=d.modalities,
                      help="manifest columns to align (default: vision depth touch audio text for the embedded "
                           "set, every modality column of a manifest)")
    data.add_argument("--data-dir", default=d.data_dir,
                      help="where to generate the embedded scenes (default $PMRL_SCI_CACHE or ~/.cache/pmrl_sci)")
    data.add_argument("--n-train", type=int, default=d.n_train, help="embedded scenes: training instances")
    data.add_argument("--n-test", type=int, default=d.n_test, help="embedded scenes: test instances")
    data.add_argument("--missing-rate", type=float, default=d.missing_rate,
                      help="embedded scenes: probability of dropping each non-text modality of an instance")
    data.add_argument("--scene-seed", type=int, default=d.scene_seed, help="embedded scenes: generator seed")
    data.add_argument("--image-size", type=int, default=d.image_size, help="images / depth maps are resized to this")
    data.add_argument("--sample-rate", type=int, default=d.sample_rate,
                      help="audio sample rate in Hz (.wav files at another rate are rejected; default 16000 for a "
                           "manifest, 8000 for the embedded scenes)")
    data.add_argument("--num-frames", type=int, default=d.num_frames, help="frames sampled from each video folder")
    data.add_argument("--max-depth", type=float, default=d.max_depth, help="depth (metres) mapped to 1")
    data.add_argument("--test-fraction", type=float, default=d.test_fraction,
                      help="test fraction of a random split when the manifest has no split column")
    data.add_argument("--val-fraction", type=float, default=d.val_fraction,
                      help="fraction of the TRAINING rows held out for validation (model selection, early stopping, "
                           "sweeps), stratified by class when every row has a label; a manifest with train, val "
                           "and test rows uses its val rows instead")

    model = p.add_argument_group("model and objective")
    model.add_argument("--objective", choices=("pmrl", "gram", "vast"), default=d.objective, help="alignment loss")
    model.add_argument("--anchor", default=d.anchor,
                       help="anchor modality of GRAM / VAST and of instance matching (default text, else the first)")
    model.add_argument("--tau1", type=float, default=d.tau1, help="PMRL: singular-value softmax temperature")
    model.add_argument("--tau2", type=float, default=d.tau2, help="PMRL: instance-wise term temperature")
    model.add_argument("--lambda1", type=float, default=d.lambda1, help="PMRL: weight of the instance-wise term")
    model.add_argument("--no-sign-aware", dest="sign_aware", action="store_false",
                       help="PMRL: use the paper's sign-blind L_M (sigma_1 is the same when a modality is negated); "
                            "by default the leading value is the energy along the mean embedding, which only "
                            "full, same-sign alignment maximises")
    model.add_argument("--lambda2", type=float, default=d.lambda2,
                       help="weight of the instance-matching loss (0 turns it off)")
    model.add_argument("--temperature", type=float, default=d.temperature, help="GRAM / VAST: initial temperature")
    model.add_argument("--embed-dim", type=int, default=d.embed_dim, help="shared embedding dimension")
    model.add_argument("--width", type=int, default=d.width, help="channels of the first CNN block")
    model.add_argument("--num-blocks", type=int, default=d.num_blocks, help="CNN blocks")
    model.add_argument("--n-mels", type=int, default=d.n_mels, help="mel bands of the audio CNN")
    model.add_argument("--text-model", default=d.text_model,
                       help="text model (local path; default the shipped MiniLM), frozen, with a trained projection")
    model.add_argument("--vision-model", default=d.vision_model,
                       help="local transformers vision model for image / video / touch columns (default: a CNN)")
    model.add_argument("--audio-model", default=d.audio_model,
                       help="local transformers audio model, e.g. an AST (default: log-mel CNN)")

    task = p.add_argument_group("task")
    task.add_argument("--few-shot", type=int, default=d.few_shot,
                      help="train on N examples per class (N instances when rows have no label)")
    task.add_argument("--zero-shot-labels", default=d.zero_shot_labels,
                      help="text file of class names ('name' or 'name<TAB>prompt' per line): report top-1 "
                           "accuracy of classifying each non-text modality by retrieval against them")

    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    train.add_argument("--batch-size", type=int, default=d.batch_size,
                       help="training batch size (the global batch under torchrun: each rank takes its share)")
    train.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="evaluation batch size")
    train.add_argument("--lr", type=float, default=d.lr,
                       help="AdamW learning rate (warm-up then cosine decay; the paper's 2e-5 is for pre-trained "
                            "encoders, these are trained from scratch)")
    train.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    train.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio, help="fraction of warm-up steps")
    train.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient-norm clip (0: off)")
    train.add_argument("--eval-every", type=int, default=d.eval_every,
                       help="evaluate validation retrieval every N epochs (0: only after the last epoch); the "
                            "best epoch by validation mean R@1 is kept and tested once, at the end")
    train.add_argument("--patience", type=int, default=d.patience,
                       help="early stopping: validations without improvement of the mean R@1 (0: off)")
    train.add_argument("--seed", type=int, default=d.seed, help="training seed")
    train.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    train.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    p.add_argument("--out", default=d.out, help="run folder (default runs/retrieval-<date-time>)")
    return p


def parse_config(argv: Sequence[str] | None = None) -> RetrievalConfig:
    """Parse the command line (and ``-c config.yaml``) into a :class:`RetrievalConfig`."""
    from pmrl_sci.config import parse_dataclass_config

    return parse_dataclass_config(build_parser(), RetrievalConfig, argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run any-modality retrieval and return the results (as written to ``results.json``).

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).
    """
    from pmrl_sci.runs import is_rank_zero

    logging.basicConfig(level=logging.INFO if is_rank_zero() else logging.WARNING, format="%(message)s")
    cfg = parse_config(argv)
    results = run_retrieval(cfg)
    if is_rank_zero():  # under torchrun the other ranks return a short record and stay quiet
        print_summary(cfg, results)
    return results


def print_summary(cfg: RetrievalConfig, results: dict[str, Any]) -> None:
    """Print the test recall (per pair), the validation score and the zero-shot accuracy of a finished run.

    Parameters
    ----------
    cfg : RetrievalConfig
        The run's configuration.
    results : dict
        What :func:`pmrl_sci.tasks.retrieval.run_retrieval` returned on rank 0.
    """
    print(f"retrieval on {results['dataset']} ({cfg.objective}; {results['n_train']} train / {results['n_val']} "
          f"validation / {results['n_test']} test): mean R@1 {results['mean_R@1']:.3f}, "
          f"mean R@10 {results['mean_R@10']:.3f}")
    validation = results["validation"]
    print(f"  validation mean R@1 {validation['mean']:.3f} at epoch {validation['best_epoch']} "
          f"(the model tested)")
    for pair, metrics in results["recall"].items():
        print(f"  {pair:>20}: R@1 {metrics['R@1']:.3f}  R@5 {metrics['R@5']:.3f}  R@10 {metrics['R@10']:.3f}  "
              f"median rank {metrics['median_rank']:.0f}")
    if "zero_shot" in results:
        accuracy = ", ".join(f"{m} {a:.3f}" for m, a in results["zero_shot"]["accuracy"].items())
        print(f"  zero-shot top-1 (chance {results['zero_shot']['chance']:.3f}): {accuracy}")
    print(f"run folder: {results['run_dir']}")


if __name__ == "__main__":
    main()
