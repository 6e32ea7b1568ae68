"""Any-modality retrieval: ``python -m pmrl_sci.retrieval [--manifest FILE] [--modalities vision audio text] ...``.

Trains encoders for the chosen modalities with PMRL (or GRAM / VAST), plus the instance-matching term
(weight ``--lambda2``, 0.1 as in the paper's retrieval setting), and evaluates R@1, R@5, R@10 and the
median rank for every ordered pair of modalities (``results.json`` ``"recall"`` keyed by
``"query->gallery"``, averaged over ``--seeds``, per seed under ``"units"``, and a heat-map PNG) on the test
rows, once per seed, with the epoch of best validation mean R@1 (``--val-fraction`` of the training rows are
held out). Epochs are numbered from 0. Rerunning with the same ``--out`` and options resumes: finished seeds
are reused and an interrupted one continues after its last finished epoch; other options are refused.
Under ``torchrun --nproc-per-node N -m pmrl_sci.retrieval``
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

from pmrl_sci.config import HelpFormatter, parse_dataclass_config
from pmrl_sci.options import add_objective_options, add_run_options, add_training_options, front_end
from pmrl_sci.runs import default_run_dir, is_rank_zero
from pmrl_sci.tasks.retrieval import RetrievalConfig, run_retrieval


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (the fields of :class:`RetrievalConfig`)."""
    d = RetrievalConfig()
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.retrieval", description=__doc__,
                                formatter_class=HelpFormatter)
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
    model.add_argument("--lambda2", type=float, default=d.lambda2,
                       help="weight of the instance-matching loss (0 turns it off)")
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

    add_objective_options(p, d, objectives=("pmrl", "gram", "vast"), helps={
        "anchor": "anchor modality of GRAM / VAST and of instance matching (default text, else the first)",
        "tau1": "PMRL: singular-value softmax temperature", "tau2": "PMRL: instance-wise term temperature"})
    train = add_training_options(p, d, helps={
        "epochs": "training epochs (numbered from 0)",
        "batch_size": "training batch size (the global batch under torchrun: each rank takes its share)",
        "lr": "AdamW learning rate (warm-up then cosine decay; the paper's 2e-5 is for pre-trained encoders, these "
              "are trained from scratch)",
        "weight_decay": "AdamW weight decay",
        "patience": "early stopping: validations in a row without improvement of the mean R@1 (0: off)"})
    train.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size, help="evaluation batch size")
    train.add_argument("--eval-every", type=int, default=d.eval_every,
                       help="evaluate validation retrieval every N epochs (0: only after the last epoch); the "
                            "best epoch by validation mean R@1 is kept and tested once, at the end")
    train.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads")
    continual = p.add_argument_group("a new modality into an aligned model")
    continual.add_argument("--init-from", default=d.init_from, metavar="RUN_DIR",
                           help="a finished retrieval run of the same rows and encoder options with one modality "
                                "fewer: each seed starts from the source seed's selected model, the source's encoders "
                                "are frozen and only the new modality's encoder (with the objective's temperature and "
                                "the instance-matching head) trains; results.json 'continual' says what was frozen")
    add_run_options(p, d, prefix="runs/retrieval", helps={
        "seed": "first seed (seeds seed, seed + 1, ...: training, the random split and the few-shot draw)",
        "seeds": "number of seeds, reported as mean and std"})
    return p


@front_end
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run any-modality retrieval and return the results (as written to ``results.json``).

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Bad input (options, manifest, data files, label file) ends with ``error: <message>`` and exit code 2.
    """
    config = parse_dataclass_config(build_parser(), RetrievalConfig, argv)
    logging.basicConfig(level=logging.INFO if is_rank_zero() else logging.WARNING, format="%(message)s")
    if config.out is None:
        config.out = str(default_run_dir("retrieval"))
    results = run_retrieval(config)
    if is_rank_zero():  # under torchrun the other ranks stay quiet
        print_summary(config, results)
    return results


def print_summary(cfg: RetrievalConfig, results: dict[str, Any]) -> None:
    """Print the test recall (per pair, mean over seeds), the validation score and the zero-shot accuracy.

    Parameters
    ----------
    cfg : RetrievalConfig
        The run's configuration.
    results : dict
        What :func:`pmrl_sci.tasks.retrieval.run_retrieval` returned.
    """
    r1, r10 = results["mean_R@1"], results["mean_R@10"]
    print(f"retrieval on {results['dataset']} ({cfg.objective}; {results['n_train']} train / {results['n_val']} "
          f"validation / {results['n_test']} test; {r1['n']} seed(s)): mean R@1 {r1['mean']:.3f} ± {r1['std']:.3f}, "
          f"mean R@10 {r10['mean']:.3f} ± {r10['std']:.3f}")
    epochs = ", ".join(str(u["best_epoch"]) for u in results["units"])
    print(f"  validation mean R@1 {results['validation']['mean']:.3f} at epoch(s) {epochs} (the models tested)")
    for pair, metrics in results["recall"].items():
        print(f"  {pair:>20}: R@1 {metrics['R@1']:.3f}  R@5 {metrics['R@5']:.3f}  R@10 {metrics['R@10']:.3f}  "
              f"median rank {metrics['median_rank']:.0f}")
    if "zero_shot" in results:
        accuracy = ", ".join(f"{m} {a['mean']:.3f}" for m, a in results["zero_shot"]["accuracy"].items())
        print(f"  zero-shot top-1 (chance {results['zero_shot']['chance']:.3f}): {accuracy}")
    print(f"run folder: {results['run_dir']}")


if __name__ == "__main__":
    main()
