"""Splits and sites of an ABIDE run: the split kind, records of older versions, per-site results.

:func:`split_kind` names a run's split (``folds``, ``bnt``, ``loso`` or ``test-sites``); :func:`site_report`
and :func:`per_site_results` say which sites a run trained and tested on and how each site fared;
:func:`upgrade_recorded_config` reads a ``config.json`` written by an older version in today's options, so that
resume checks compare like with like; :func:`parse_sites` reads ``--test-sites``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pmrl_sci.engine.units import IMPLIED_BY_OLDER_RUNS
from pmrl_sci.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pmrl_sci.tasks.abide import AbideConfig


#: ABIDE options that runs recorded before the option existed had implicitly, at these values (the behaviour of the
#: version before the option came): such a run is compared as if it had recorded them, so it resumes under these
#: values and is refused under today's defaults where they differ (e.g. a run from before --text-fields had the text
#: "age, gender" and a 0.5 threshold; one from before --sign-aware had the paper's L_M)
IMPLIED_BY_OLDER_ABIDE_RUNS: dict[str, Any] = {
    **IMPLIED_BY_OLDER_RUNS,  # the engine's (init_offset, ema_decay)
    "model": "multimodal", "fmri_encoder": "brainnettf", "gram_contrastive": True, "sign_aware": False,
    "text_fields": ["age", "sex"], "threshold": "0.5", "test_sites": None, "combat_unseen": "passthrough",
    "align_epochs": 0, "init_from": None, "adapt": "none", "adapt_labels": None, "setting": "default",
    "fmri_standardize": False, "fmri_crop": 0.0, "ensemble": 1, "mixup": 0.0,
    "fusion": "none", "fusion_select": "trained",
}


def upgrade_recorded_config(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A ``config.json`` of an older version in today's options.

    Before ``--split folds`` existed (and became the default), K-fold runs were recorded as ``split: bnt`` with
    ``folds: K``; they are the same runs as ``split: folds``, so a rerun resumes them. ``--seed`` was
    ``--seed-offset``. An option the run did not record did not exist yet: the run had the behaviour of
    :data:`IMPLIED_BY_OLDER_ABIDE_RUNS` (e.g. no weight average, ``ema_decay: 0.0``, so that a rerun with an
    average does not resume it and mix its units with averaged ones).
    """
    upgraded = dict(recorded)
    if "seed" not in upgraded and "seed_offset" in upgraded:
        upgraded["seed"] = upgraded.pop("seed_offset")
    for key, value in IMPLIED_BY_OLDER_ABIDE_RUNS.items():
        upgraded.setdefault(key, list(value) if isinstance(value, list) else value)
    if upgraded.get("split") == "bnt" and upgraded.get("folds") is not None:
        upgraded["split"] = "folds"
    return upgraded


def parse_sites(value: str | list[str]) -> list[str]:
    """``--test-sites``: ``"SITE[,SITE...]"`` (or a list of such strings) as a sorted list of unique site names."""
    parts = [part.strip() for item in ([value] if isinstance(value, str) else value) for part in str(item).split(",")]
    if not parts or any(not part for part in parts):
        raise InputError(f"--test-sites expects SITE[,SITE...] (comma-separated site names), got {value!r}")
    return sorted(set(parts))


def split_kind(config: AbideConfig) -> str:
    """``"loso"``, ``"test-sites"``, ``"folds"`` or ``"bnt"``."""
    return ("loso" if config.split == "loso" else "test-sites" if config.test_sites else
            "bnt" if config.split == "bnt" else "folds")


def unseen_sites(sites: np.ndarray, parts: Mapping[str, np.ndarray]) -> list[str]:
    """Sites of a unit's test part with no subject in its training part (sorted)."""
    return sorted(set(sites[parts["test"]].tolist()) - set(sites[parts["train"]].tolist()))


def site_report(config: AbideConfig) -> dict[str, Any]:
    """What ``data_report.json`` says about site splits and ComBat on sites absent from training."""
    report: dict[str, Any] = {"split": split_kind(config), "test_sites": config.test_site_list,
                              "combat_unseen": config.combat_unseen}
    uses_combat = "smri" in config.modalities and config.combat == "train"
    if uses_combat and config.combat_unseen == "estimate":
        report["note"] = ("--combat-unseen estimate: the sMRI of subjects from sites with no training subject (the "
                          "held-out test sites) was used WITHOUT their diagnosis labels (sMRI, age and sex only) to "
                          "estimate their site's ComBat location and scale, the training fit held fixed; per unit "
                          "see prep.combat.unlabelled_estimation in done/<unit>.json and combat_unseen in "
                          "results.json")
    elif uses_combat:
        report["note"] = ("--combat-unseen passthrough: sMRI of sites with no training subject is not harmonised "
                          "(ComBat returns it unadjusted) before standardisation with training statistics")
    return report


def per_site_results(results: list[dict[str, Any]], unseen: Mapping[str, list[str]]) -> dict[str, Any]:
    """``per_site`` metrics and the ``unseen_sites`` of a run, pooled over its units.

    Every unit's test predictions are pooled: over the units of one seed each subject is tested at most once
    (folds and ``--split loso`` test every subject once, the BrainNetTF split and ``--test-sites`` some), so a
    subject's prediction is counted once per seed; the metrics of a site (AUC, accuracy, sensitivity,
    specificity, ``n`` = pooled predictions) are computed on all its pooled predictions together, across seeds.
    A metric undefined for a site (one class only) is ``null`` with the reason under ``undefined``. A site is
    ``unseen_in_training`` when no unit that tested it had one of its subjects in its training part;
    ``unseen_sites`` lists the sites that some unit tested without having trained on them. Units recorded
    without predictions (by an older version) are left out and named under ``per_site_missing_units``.
    """
    from pmrl_sci.metrics import per_group_metrics

    pooled = [r for r in results if r.get("predictions")]
    out: dict[str, Any] = {"unseen_sites": sorted({site for sites in unseen.values() for site in sites})}
    missing = [r["unit"] for r in results if not r.get("predictions")]
    if missing:
        out["per_site_missing_units"] = missing
    if not pooled:
        out["per_site"] = {}
        return out
    column = {key: [v for r in pooled for v in r["predictions"][key]] for key in ("site", "label", "prob")}
    per_site = per_group_metrics(column["label"], column["prob"], column["site"])
    tested_seen = {site for r in pooled for site in r["predictions"]["site"] if site not in unseen.get(r["unit"], [])}
    for site, entry in per_site.items():
        entry["unseen_in_training"] = site not in tested_seen
    out["per_site"] = per_site
    return out
