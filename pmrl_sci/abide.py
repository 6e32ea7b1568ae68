"""ABIDE autism classification with fMRI, sMRI and phenotype text: ``python -m pmrl_sci.abide``.

With no ``--data-dir`` a simulated multi-site cohort is generated in the real ABIDE formats and
read back by the same readers. Results go to a run folder (``--out``): resolved config, data
report, metrics.jsonl, results.json, ROC curve and singular-value plots. Rerunning with the
same ``--out`` resumes: finished trials and folds are not run again.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from pmrl_sci.config import parse_dataclass_config
from pmrl_sci.runs import default_run_dir, is_rank_zero
from pmrl_sci.tasks.abide import ABIDE_MODALITIES, FMRI_CHANNELS, MODELS, AbideConfig, run_abide


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (``--help`` explains each)."""
    d = AbideConfig()
    p = argparse.ArgumentParser(prog="python -m pmrl_sci.abide", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
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
    data.add_argument("--combat", choices=["train", "paper", "off"], default=d.combat,
                      help="ComBat for sMRI: fitted on training subjects (age, sex); 'paper' fits on all subjects "
                           "with diagnosis (leaky, marked in the run folder); or off")
    data.add_argument("--text-model", default=d.text_model,
                      help="local path or cached Hugging Face name of the text model (default: the shipped MiniLM)")
    data.add_argument("--download", action="store_true", help="fetch ABIDE with nilearn's fetch_abide_pcp (network)")
    data.add_argument("--cache-dir", default=d.cache_dir,
                      help="cache for generated data, preprocessed tensors and text embeddings "
                           "(default $PMRL_SCI_CACHE or ~/.cache/pmrl_sci)")
    data.add_argument("--default-subjects", type=int, default=d.default_subjects,
                      help="size of the generated cohort when no --data-dir is given")
    data.add_argument("--default-sites", type=int, default=d.default_sites, help="sites of the generated cohort")
    data.add_argument("--model", choices=MODELS, default=d.model,
                      help="multimodal: the PMRL/GRAM/VAST model over --modalities; brainnettf, vanillatf, "
                           "brainnetcnn: fMRI-only encoder baselines with cross-entropy; gcn: population-graph GCN "
                           "(Parisot et al. 2018); logistic: logistic regression on vectorised connectivity")
    data.add_argument("--fmri-encoder", choices=["brainnettf", "vanillatf", "brainnetcnn"], default=d.fmri_encoder,
                      help="fMRI encoder of the multimodal model")
    obj = p.add_argument_group("objective")
    obj.add_argument("--objective", choices=["pmrl", "gram", "vast", "none"], default=d.objective,
                     help="alignment objective added to the classification loss")
    obj.add_argument("--tau1", type=float, default=d.tau1, help="PMRL: temperature over singular values")
    obj.add_argument("--tau2", type=float, default=d.tau2, help="PMRL: temperature of the instance-wise term")
    obj.add_argument("--lambda1", type=float, default=d.lambda1, help="PMRL: weight of the instance-wise term")
    obj.add_argument("--no-instance-term", dest="instance_term", action="store_false",
                     help="PMRL without the instance-wise term (ablation 'w/o reg')")
    obj.add_argument("--rank", type=int, default=d.rank, help="PMRL: 2 for the sigma_1 + sigma_2 ablation")
    obj.add_argument("--no-sign-aware", dest="sign_aware", action="store_false",
                     help="PMRL: use the paper's sign-blind L_M (sigma_1 is the same when a modality is negated); "
                            "by default the leading value is the energy along the mean embedding, which only "
                            "full, same-sign alignment maximises")
    obj.add_argument("--temperature", type=float, default=d.temperature, help="GRAM/VAST: initial temperature")
    obj.add_argument("--anchor", default=d.anchor, help="GRAM/VAST anchor modality (default: the last, text)")
    obj.add_argument("--gram-volume-only", dest="gram_contrastive", action="store_false",
                     help="GRAM without its contrastive part: minimise the mean volume alone ('w/o reg')")
    obj.add_argument("--align-weight", type=float, default=d.align_weight, help="weight of the alignment objective")
    obj.add_argument("--classification-weight", type=float, default=d.classification_weight,
                     help="weight of the cross-entropy (0 for the 'w/o classification' ablation)")
    tr = p.add_argument_group("training")
    tr.add_argument("--split", choices=["bnt"], default=d.split,
                    help="BrainNetTF protocol: site-stratified 70/10/20 train/validation/test")
    tr.add_argument("--folds", type=int, default=d.folds,
                    help="K-fold cross-validation stratified by diagnosis and site instead of --split")
    tr.add_argument("--seeds", type=int, default=d.seeds, help="trials (reported as mean and std)")
    tr.add_argument("--seed-offset", type=int, default=d.seed_offset, help="first seed")
    tr.add_argument("--epochs", type=int, default=d.epochs,
                    help="maximum epochs per trial (default 100 on real data, 30 on the embedded simulated cohort)")
    tr.add_argument("--patience", type=int, default=d.patience, help="early stopping on validation AUC")
    tr.add_argument("--batch-size", type=int, default=d.batch_size)
    tr.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    tr.add_argument("--weight-decay", type=float, default=d.weight_decay)
    tr.add_argument("--embed-dim", type=int, default=d.embed_dim, help="dimension of every modality embedding")
    tr.add_argument("--dropout", type=float, default=d.dropout)
    tr.add_argument("--input-noise", type=float, default=d.input_noise,
                    help="std of Gaussian noise added to every modality's normalised inputs (train and test)")
    tr.add_argument("--label-noise", type=float, default=d.label_noise,
                    help="probability of flipping each training label")
    tr.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1, ...")
    tr.add_argument("--out", default=None, help="run folder (default runs/abide-<time>); reuse it to resume")
    tr.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run from command-line arguments and return the results (as written to results.json)."""
    parser = build_parser()
    config = parse_dataclass_config(parser, AbideConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if config.out is None:
        config.out = str(default_run_dir("abide"))
    if config.folds is not None and config.folds < 2:
        parser.error("--folds must be >= 2")
    try:
        results = run_abide(config)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    auc, acc = results["auc"], results["accuracy"]
    if not is_rank_zero():
        return results
    label = results["objective"] if results["model"] == "multimodal" else results["model"]
    print(f"[pmrl_sci.abide] {label} on {'+'.join(results['modalities'])}: "
          f"AUC {auc['mean']:.3f} ± {auc['std']:.3f}, accuracy {acc['mean']:.3f} ± {acc['std']:.3f} "
          f"({auc['n']} run(s)); results in {config.out}")
    return results


if __name__ == "__main__":
    main()
