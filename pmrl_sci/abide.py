"""ABIDE autism classification with fMRI, sMRI and phenotype text: ``python -m pmrl_sci.abide``.

With no ``--data-dir`` a simulated multi-site cohort is generated in the real ABIDE formats and
read back by the same readers. Results go to a run folder (``--out``): resolved config, data
report, metrics.jsonl, results.json, ROC curve and singular-value plots. Rerunning with the
same ``--out`` and the same options resumes: finished trials and folds are not run again, and an
interrupted one continues from its last finished epoch; other options are refused. ``--init-from RUN_DIR``
starts every unit from a finished run's selected model, to adapt it to the test sites (``--adapt``) or to train
one new modality into it (see pmrl_sci/tasks/abide_adapt.py).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from pmrl_sci.config import HelpFormatter, parse_dataclass_config
from pmrl_sci.data.abide.text_fields import EXCLUDED_FIELDS, TEXT_FIELDS
from pmrl_sci.options import add_objective_options, add_run_options, add_training_options, front_end
from pmrl_sci.runs import default_run_dir, is_rank_zero
from pmrl_sci.tasks.abide import (
    ABIDE_MODALITIES,
    COMBAT_UNSEEN,
    ENCODER_BASELINES,
    FMRI_CHANNELS,
    MODELS,
    SETTINGS,
    SPLITS,
    AbideConfig,
    run_abide,
)
from pmrl_sci.tasks.abide_adapt import ADAPT_MODES
from pmrl_sci.tasks.abide_fit import FUSION_SELECTS, FUSIONS, THRESHOLDS


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (``--help`` explains each)."""
    d = AbideConfig()
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.abide", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--setting", choices=list(SETTINGS), default=d.setting,
                   help="default: the kit's recipe (the defaults shown below); paper: the paper's ABIDE setting "
                        "(PMRL with the paper's L_M, tau1 0.05, tau2 0.4, lambda1 1; BrainNetTF on Pearson and "
                        "partial correlation; text 'age, gender'; threshold 0.5; no alignment-first phase); a "
                        "config file's values and the flags given override either")
    data = p.add_argument_group("data")
    data.add_argument("--modalities", nargs="+", choices=ABIDE_MODALITIES, default=d.modalities,
                      help="any non-empty subset; with one modality there is no alignment term")
    data.add_argument("--data-dir", default=d.data_dir,
                      help="ABIDE root holding ABIDE_pcp/<pipeline>/<strategy>/ and the phenotype CSV "
                           "(default: generate the embedded simulated cohort)")
    data.add_argument("--atlas", default=d.atlas,
                      help="PCP ROI derivative: cc200, cc400, ho, aal, ez, tt, dosenbach160")
    data.add_argument("--pipeline", default=d.pipeline, help="PCP preprocessing pipeline folder")
    data.add_argument("--strategy", default=d.strategy, help="PCP noise-removal strategy folder")
    data.add_argument("--freesurfer-dir", default=d.freesurfer_dir,
                      help="FreeSurfer group tables (asegstats2table/aparcstats2table) or per-subject stats folders")
    data.add_argument("--no-quality-filter", dest="quality_checked", action="store_false",
                      help="keep subjects that fail nilearn's rater quality filter")
    data.add_argument("--fmri-channels", choices=list(FMRI_CHANNELS), default=d.fmri_channels,
                      help="connectivity given to the fMRI encoder: Pearson correlation (BrainNetTF's connection "
                           "profiles), partial correlation, or both (node features concatenated)")
    data.add_argument("--fmri-standardize", action=argparse.BooleanOptionalAction, default=d.fmri_standardize,
                      help="standardise every connectivity entry with the training subjects' mean and standard "
                           "deviation (as the logistic regressions' StandardScaler does)")
    data.add_argument("--fmri-crop", type=float, default=d.fmri_crop, metavar="FRACTION",
                      help="window-crop augmentation: each time a training subject is drawn, its Pearson "
                           "connectivity is recomputed on a random window of this fraction of its ROI time series "
                           "(validation and test use the whole series); 0: off")
    data.add_argument("--combat", choices=["train", "paper", "off"], default=d.combat,
                      help="ComBat for sMRI: fitted on training subjects (age, sex); 'paper' fits on all subjects "
                           "with diagnosis (leaky, marked in the run folder); or off")
    data.add_argument("--combat-unseen", choices=list(COMBAT_UNSEEN), default=d.combat_unseen,
                      help="ComBat on a site with no training subject (--test-sites, --split loso): leave its sMRI "
                           "unadjusted, or estimate its location and scale from its own subjects' sMRI, age and sex "
                           "(no diagnosis) with the training fit held fixed (uses the unlabelled test subjects; "
                           "stated in data_report.json)")
    data.add_argument("--text-model", default=d.text_model,
                      help="local path or cached Hugging Face name of the text model (default: the shipped MiniLM)")
    data.add_argument("--text-fields", nargs="+", default=d.text_fields, metavar="FIELD",
                      help=f"phenotype fields of the text, from {list(TEXT_FIELDS)} (-9999 or blank: 'not stated'); "
                           f"never a diagnosis-derived field ({', '.join(EXCLUDED_FIELDS[:4])}, ADOS, ADI-R, SRS...: "
                           "refused). Default: all six, e.g. 'age: 12, gender: male, handedness: left, full-scale IQ: "
                           "112, ...'; the paper's text is --text-fields age sex")
    data.add_argument("--download", action="store_true", help="fetch ABIDE with nilearn's fetch_abide_pcp (network)")
    data.add_argument("--cache-dir", default=d.cache_dir,
                      help="cache for generated data, preprocessed tensors and text embeddings "
                           "(default $PMRL_SCI_CACHE or ~/.cache/pmrl_sci)")
    data.add_argument("--default-subjects", type=int, default=d.default_subjects,
                      help="size of the generated cohort when no --data-dir is given")
    data.add_argument("--default-sites", type=int, default=d.default_sites, help="sites of the generated cohort")
    data.add_argument("--model", choices=MODELS, default=d.model,
                      help="multimodal: the PMRL/GRAM/VAST model over --modalities; brainnettf, vanillatf, "
                           "brainnetcnn, edge_mlp: fMRI-only encoder baselines with cross-entropy; gcn: population-"
                           "graph GCN (Parisot et al. 2018); logistic: logistic regression on vectorised connectivity; "
                           "logistic-all: logistic regression on every input of --modalities (connectivity, sMRI "
                           "harmonised on training subjects, the text's phenotype fields as numbers), C chosen on "
                           "validation")
    data.add_argument("--fmri-encoder", choices=list(ENCODER_BASELINES), default=d.fmri_encoder,
                      help="fMRI encoder of the multimodal model (edge_mlp: an MLP over the connectome's "
                           "upper-triangle edges)")
    objective = add_objective_options(p, d, helps={"objective": "alignment objective added to the classification loss",
                                       "anchor": "GRAM/VAST anchor modality (default: the last, text)"})
    objective.add_argument(
        "--align-epochs", type=int, default=d.align_epochs,
        help="self-supervised alignment first: this many epochs of the alignment objective alone on every "
             "training subject (labels unused) before the --epochs epochs of cross-entropy (+ --align-weight x "
             "alignment); model selection and early stopping start after them; 0: none")
    tr = add_training_options(p, d, helps={
        "epochs": "maximum epochs per trial (default 100 on real data, 30 on the embedded simulated cohort)",
        "patience": "early stopping on validation AUC: stop after this many epochs without improvement; 0: off",
        "lr": "Adam learning rate"})
    tr.add_argument("--split", choices=list(SPLITS), default=d.split,
                    help="folds (default): K-fold cross-validation (--folds, default 5) stratified by diagnosis x "
                         "site, a validation part carved from each training part (70/10/20 with 5 folds); bnt: the "
                         "BrainNetTF protocol the paper used, one site-stratified 70/10/20 split per seed; loso: "
                         "leave one site out (one unit per site, validation carved from the other sites, stratified "
                         "by diagnosis x site)")
    tr.add_argument("--test-sites", default=d.test_sites, metavar="SITE[,SITE...]",
                    help="test on these sites, train and validate on the others (instead of the default folds; not "
                         "with --split bnt/loso or --folds)")
    tr.add_argument("--folds", type=int, default=d.folds,
                    help="K of the default cross-validation (--split folds), 5 when not given: every subject is "
                         "tested once per seed")
    tr.add_argument("--threshold", choices=list(THRESHOLDS), default=d.threshold,
                    help="decision threshold of accuracy, sensitivity and specificity: 0.5, or 'val': the one "
                         "maximising balanced accuracy (Youden's J) on the validation subjects (AUC does not use it)")
    tr.add_argument("--ensemble", type=int, default=d.ensemble, metavar="M",
                    help="train M models per unit from M initialisations (--init-offset, +1, ...) on the same split "
                         "and report their averaged probabilities (a deep ensemble; M times the training); 1: off")
    tr.add_argument("--fusion", choices=list(FUSIONS), default=d.fusion,
                    help="'logistic': report the trained model's probabilities averaged at equal weights with those "
                         "of logistic regression on the same inputs (--model logistic-all's, fitted on the same "
                         "training subjects), the threshold chosen on the averaged validation probabilities; "
                         "'none': the trained model alone")
    tr.add_argument("--fusion-select", dest="fusion_select", choices=list(FUSION_SELECTS), default=d.fusion_select,
                    help="with --fusion logistic, the validation AUC that selects the trained model's epoch (and "
                         "early stopping): its own ('trained') or that of its probabilities fused with the logistic "
                         "regression, fitted first ('fused': the AUC of what is reported; it did not help on the "
                         "dev sites)")
    tr.add_argument("--mixup", type=float, default=d.mixup, metavar="ALPHA",
                    help="mixup of the training batches in the supervised epochs: every modality of a subject mixed "
                         "with the same partner at the same Beta(ALPHA, ALPHA) weight, the cross-entropy with both "
                         "labels at that weight; 0: off")
    tr.add_argument("--embed-dim", type=int, default=d.embed_dim, help="dimension of every modality embedding")
    tr.add_argument("--dropout", type=float, default=d.dropout)
    tr.add_argument("--input-noise", type=float, default=d.input_noise,
                    help="std of Gaussian noise added to every modality's normalised inputs (train and test)")
    tr.add_argument("--label-noise", type=float, default=d.label_noise,
                    help="probability of flipping each training label")
    add_run_options(p, d, prefix="runs/abide", helps={"seeds": "trials (reported as mean and std)"})
    adapt = p.add_argument_group(
        "starting from a finished run (adaptation to the test sites, a new modality)",
        "Each unit starts from the source run's unit of the same seed that tested the same subjects (--split loso: "
        "the source unit that held out the same site) with the same training and validation subjects, so inputs "
        "are preprocessed with the same training statistics. results.json 'adaptation' records the source model "
        "(before) and the adapted one (after) on the same target subjects, per unit and per site.")
    adapt.add_argument("--init-from", default=d.init_from, metavar="RUN_DIR",
                       help="a finished run folder (config.json, done/, checkpoints/) of the same cohort, inputs and "
                            "model; with exactly one modality more than the source, only the new encoder trains "
                            "(the source's encoders and the classifier are frozen)")
    adapt.add_argument("--adapt", choices=list(ADAPT_MODES), default=d.adapt,
                       help="none: test the source model (a new modality: train its encoder on the training "
                            "subjects); align: train the alignment objective alone on the unlabelled target (test) "
                            "subjects, classifier frozen, selected by their alignment loss (transductive); finetune: "
                            "cross-entropy + alignment on --adapt-labels labelled target subjects per class (removed "
                            "from the test set), selected on the source's validation part")
    adapt.add_argument("--adapt-labels", type=int, default=d.adapt_labels, metavar="N",
                       help="--adapt finetune: labelled target subjects per class and unit (drawn with the unit's "
                            "seed from all its test subjects; with several --test-sites, not N per site)")
    return p


@front_end
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run from command-line arguments and return the results (as written to results.json).

    Bad input (options, data files) ends with ``error: <message>`` and exit code 2.
    """
    parser = build_parser()
    config = parse_dataclass_config(parser, AbideConfig, argv, presets=SETTINGS)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if config.out is None:
        config.out = str(default_run_dir("abide"))
    results = run_abide(config)
    auc, acc = results["auc"], results["accuracy"]
    if not is_rank_zero():
        return results
    label = results["objective"] if results["model"] == "multimodal" else results["model"]
    print(f"[pmrl_sci.abide] {label} on {'+'.join(results['modalities'])}: "
          f"AUC {auc['mean']:.3f} ± {auc['std']:.3f}, accuracy {acc['mean']:.3f} ± {acc['std']:.3f} "
          f"({auc['n']} run(s)); results in {config.out}")
    if "fusion" in results:  # the fused numbers above; each model alone on the same units
        f = results["fusion"]
        print(f"  averaged with logistic regression on the same inputs (--fusion {f['mode']}); alone: trained model "
              f"AUC {f['deep_auc']['mean']:.3f}, logistic regression AUC {f['linear_auc']['mean']:.3f}")
    for site, m in results.get("per_site", {}).items():
        shown = "  ".join(f"{k} {'n/a' if m[k] is None else format(m[k], '.3f')}" for k in ("auc", "accuracy"))
        print(f"  site {site}: {shown} (n={m['n']}{', unseen in training' if m['unseen_in_training'] else ''})")
    if "adaptation" in results:
        a = results["adaptation"]
        print(f"  --adapt {a['mode']} from {a['init_from']}: AUC before {a['before']['auc']['mean']:.3f}, after "
              f"{a['after']['auc']['mean']:.3f} (delta {a['delta']['auc']['mean']:+.3f}) on the same target subjects; "
              f"trained: {', '.join(a['trained']) or 'nothing'}")
    return results


if __name__ == "__main__":
    main()
