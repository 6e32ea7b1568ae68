"""Same-run comparison tables: each method against a reference method, paired over the same units.

A unit is one seed x fold (or one seed of the 70/10/20 split) of a run folder's ``results.json``
(``units``: one entry per unit with its test metrics). :func:`paired_difference` takes the per-unit
differences ``method - reference`` over the units both ran and gives their mean with a t interval;
:func:`compare_table` builds the table (mean ± std over units per metric, the final validation singular
values where the model has them, the decision thresholds, and the paired difference of each metric
against the reference) and :func:`write_compare_table` writes it as Markdown and CSV.

The units of a K-fold run share training subjects (and, over seeds, test subjects), so their differences
are not independent and the plain t interval over them is too narrow. Where the units record their sizes
(``n_train``, ``n_test``), the interval is the corrected resampled t interval of Nadeau & Bengio (2003), as
Bouckaert & Frank (2004) apply it to repeated cross-validation: the variance of the mean difference is
``(1/n + n_test/n_train) * sd**2`` instead of ``sd**2 / n``, with n - 1 degrees of freedom. It is a
heuristic (derived for random subsampling) and still not exact for leave-one-site-out units, whose seeds
share test sites, but it is far closer to the real variability than the plain interval; tables say which
interval they give.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pmrl_sci.io import atomic_write_text
from pmrl_sci.reports.tables import DEFAULT_METRICS, TableRow, format_mean_std, pd, read_results


def paired_difference(reference: Mapping[str, float], other: Mapping[str, float],
                      confidence: float = 0.95, test_train_ratio: float | None = None) -> dict[str, Any]:
    """Mean paired difference ``other - reference`` over the units both hold, with a t interval.

    Parameters
    ----------
    reference, other : mapping of unit name to float
        One value per unit (e.g. test AUC per seed x fold); units with a NaN on either side are left out.
    confidence : float
        Coverage of the interval, in (0, 1).
    test_train_ratio : float, optional
        ``n_test / n_train`` of the units (:func:`unit_size_ratio`): the interval is then the corrected
        resampled t interval (Nadeau & Bengio 2003; Bouckaert & Frank 2004) for units that share training
        subjects, ``mean ± t_{(1+confidence)/2, n-1} * sd * sqrt(1/n + test_train_ratio)``. ``None``: the plain
        t interval ``mean ± t * sd / sqrt(n)``, right only for independent units.

    Returns
    -------
    dict
        ``mean``, ``low``, ``high`` (NaN for fewer than two units; ``sd`` is the sample standard deviation of
        the differences), ``n`` (units paired) and ``test_train_ratio`` (None for the plain interval).
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if test_train_ratio is not None and not (math.isfinite(test_train_ratio) and test_train_ratio > 0.0):
        raise ValueError(f"test_train_ratio must be a positive number, got {test_train_ratio}")
    units = sorted(set(reference) & set(other))
    diffs = np.array([float(other[u]) - float(reference[u]) for u in units], dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    n = int(diffs.size)
    out: dict[str, Any] = {"mean": math.nan, "low": math.nan, "high": math.nan, "n": n,
                           "test_train_ratio": test_train_ratio}
    if n == 0:
        return out
    out["mean"] = mean = float(diffs.mean())
    if n < 2:
        return out
    scale = math.sqrt(1.0 / n + (test_train_ratio or 0.0))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1) * diffs.std(ddof=1) * scale)
    out["low"], out["high"] = mean - half, mean + half
    return out


def unit_size_ratio(results: Mapping[str, Any]) -> float | None:
    """Mean ``n_test / n_train`` over the units of a ``results.json`` (None when a unit lacks either size).

    The ratio of :func:`paired_difference`'s corrected interval.
    """
    ratios = []
    for unit in results.get("units") or []:
        n_train, n_test = unit.get("n_train"), unit.get("n_test")
        if not n_train or not n_test:
            return None
        ratios.append(float(n_test) / float(n_train))
    return float(np.mean(ratios)) if ratios else None


def interval_note(test_train_ratio: float | None, confidence: float = 0.95) -> str:
    """One sentence that says which interval a table gives (see :func:`paired_difference`)."""
    if test_train_ratio is None:
        return (f"{confidence:.0%} plain t interval over the paired units; the units did not record their sizes, "
                "so it is not corrected for shared training subjects and is too narrow for cross-validation units.")
    return (f"{confidence:.0%} corrected resampled t interval over the paired units (Nadeau & Bengio 2003; "
            f"variance x (1/n + n_test/n_train), n_test/n_train = {test_train_ratio:.3f}), because units drawn "
            "from the same subjects share training subjects (and, over seeds, test subjects).")


def unit_values(results: Mapping[str, Any], metric: str) -> dict[str, float]:
    """``{unit name: value}`` of one metric from a ``results.json`` (missing or null values are NaN)."""
    out = {}
    for unit in results.get("units") or []:
        value = unit.get(metric)
        out[str(unit.get("unit"))] = float(value) if value is not None else math.nan
    return out


def _mean_sigma(results: Mapping[str, Any]) -> list[float] | None:
    sigmas = [u.get("val_sigma") for u in results.get("units") or [] if u.get("val_sigma")]
    if not sigmas or len({len(s) for s in sigmas}) != 1:
        return None
    return np.asarray(sigmas, dtype=float).mean(axis=0).tolist()


def compare_table(rows: Sequence[TableRow], reference: str, metrics: Sequence[str] = tuple(DEFAULT_METRICS),
                  confidence: float = 0.95) -> pd.DataFrame:
    """One row per method: metrics (mean, std over units), validation sigmas, thresholds, paired differences.

    Parameters
    ----------
    rows : sequence of TableRow
        Run folders, in table order; one of them has ``method == reference``.
    reference : str
        The method every row is compared with.
    metrics : sequence of str
        Per-unit metrics of ``results.json``.
    confidence : float
        Coverage of the paired intervals (corrected for shared training subjects with the reference's
        ``n_test / n_train`` where its units record them; see :func:`paired_difference`).

    Returns
    -------
    pandas.DataFrame
        ``method``, ``<m>_mean``, ``<m>_std``, ``n`` (units), ``val_sigma`` (mean over units of the
        selected epoch's validation singular values, or None), ``threshold_mean``, ``threshold_std``, and per
        metric ``diff_<m>``, ``diff_<m>_low``, ``diff_<m>_high``, ``diff_n``, ``test_train_ratio`` (None: plain
        interval); ``simulated_data``, ``leaky``, ``path``.
    """
    loaded = [(row, read_results(row.path)) for row in rows]
    ref = [results for row, results in loaded if row.method == reference]
    if not ref:
        raise ValueError(f"reference method {reference!r} is not among the rows {[r.method for r in rows]}")
    ratio = unit_size_ratio(ref[0])
    records = []
    for row, results in loaded:
        record: dict[str, Any] = {"method": row.method, **row.columns}
        for metric in metrics:
            values = np.array(list(unit_values(results, metric).values()), dtype=float)
            finite = values[np.isfinite(values)]
            record[f"{metric}_mean"] = float(finite.mean()) if finite.size else math.nan
            record[f"{metric}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        record["n"] = len(results.get("units") or [])
        sigma = _mean_sigma(results)
        record["val_sigma"] = None if sigma is None else " / ".join(f"{s:.3f}" for s in sigma)
        thresholds = np.array(list(unit_values(results, "threshold").values()), dtype=float)
        record["threshold_mean"] = float(np.nanmean(thresholds)) if np.isfinite(thresholds).any() else math.nan
        record["threshold_std"] = float(np.nanstd(thresholds, ddof=1)) if np.isfinite(thresholds).sum() > 1 \
            else math.nan
        for metric in metrics:
            diff = paired_difference(unit_values(ref[0], metric), unit_values(results, metric), confidence, ratio)
            record[f"diff_{metric}"], record[f"diff_{metric}_low"] = diff["mean"], diff["low"]
            record[f"diff_{metric}_high"], record["diff_n"] = diff["high"], diff["n"]
        record["test_train_ratio"] = ratio
        record["simulated_data"] = bool(results.get("simulated_data", False))
        record["leaky"] = bool(results.get("leaky", False))
        record["path"] = str(row.path)
        records.append(record)
    return pd.DataFrame.from_records(records)


def format_difference(mean: float, low: float, high: float, scale: float = 100.0, digits: int = 1) -> str:
    """``"+2.3 [-1.0, +5.6]"`` (points, ``scale`` 100); ``"n/a"`` without a mean; no interval below two units."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    text = f"{mean * scale:+.{digits}f}"
    if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"
    return text


def paired_unit_table(values: Mapping[str, Mapping[str, float]], reference: str,
                      partners: Mapping[str, str] | None = None, metric: str = "AUC",
                      partner_title: str = "partner", test_train_ratio: float | None = None) -> pd.DataFrame:
    """Rows of per-unit values (e.g. test AUC of analyses that are not run folders) with their paired differences.

    Parameters
    ----------
    values : mapping of row label to {unit: value}
        One value per unit and row, in [0, 1] (shown in points).
    reference : str
        The row every other row is paired with (``ΔMETRIC vs <reference> [95% CI]``).
    partners : mapping of row label to row label, optional
        A second paired difference for some rows, against their partner row (column ``ΔMETRIC vs
        <partner_title>``); "—" elsewhere.
    metric, partner_title : str
        Column titles.
    test_train_ratio : float, optional
        ``n_test / n_train`` of the units: corrected intervals (:func:`paired_difference`); None: plain ones.

    Returns
    -------
    DataFrame
        Indexed by row label: ``units``, ``METRIC`` (mean ± std over units, sample std) and the differences
        (:func:`paired_difference`, :func:`format_difference`).
    """
    from pmrl_sci.runs import summarize

    records = []
    for label, row in values.items():
        stats = summarize(v for v in row.values() if math.isfinite(v))
        record = {"method": label, "units": stats["n"], metric: format_mean_std(stats["mean"], stats["std"])}
        diff = paired_difference(values[reference], row, test_train_ratio=test_train_ratio) \
            if label != reference else None
        record[f"Δ{metric} vs {reference} [95% CI]"] = format_difference(**_interval(diff)) if diff else "—"
        if partners:
            pair = paired_difference(values[partners[label]], row, test_train_ratio=test_train_ratio) \
                if label in partners else None
            record[f"Δ{metric} vs {partner_title} [95% CI]"] = format_difference(**_interval(pair)) if pair else "—"
        records.append(record)
    return pd.DataFrame.from_records(records).set_index("method")


def _interval(diff: Mapping[str, float]) -> dict[str, float]:
    return {"mean": diff["mean"], "low": diff["low"], "high": diff["high"]}


def frame_markdown(table: pd.DataFrame) -> str:
    """``table`` (its index as the first column) as a Markdown table."""
    header = [str(table.index.name or ""), *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in (index, *row)) + " |"
              for index, row in zip(table.index, table.itertuples(index=False))]
    return "\n".join(lines) + "\n"


def compare_markdown(table: pd.DataFrame, reference: str, metrics: Mapping[str, str] = DEFAULT_METRICS,
                     confidence: float = 0.95) -> str:
    """The comparison as Markdown, with the notes that say how to read the paired differences."""
    header = ["method", *[f"{t} (%)" for t in metrics.values()], "units", "val σ (selected epoch)",
              "threshold", *[f"Δ{t} vs reference [{confidence:.0%} CI]" for t in metrics.values()]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|"]
    for _, row in table.iterrows():
        label = f"{row['method']} (reference)" if row["method"] == reference else row["method"]
        cells = [label, *[format_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics], int(row["n"]),
                 row["val_sigma"] if isinstance(row["val_sigma"], str) and row["val_sigma"] else "—",
                 format_mean_std(row["threshold_mean"], row["threshold_std"], scale=1.0, digits=2)]
        cells += ["—" if row["method"] == reference else
                  format_difference(row[f"diff_{m}"], row[f"diff_{m}_low"], row[f"diff_{m}_high"]) for m in metrics]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    notes = [
        f"Reference: {reference}. Δ = method − reference in points, the mean over paired units (seed × fold, the "
        "same splits and seeds for every method) with a "
        + interval_note(_table_ratio(table), confidence),
        "Metric cells: mean ± std over units. Accuracy, sensitivity and specificity are at each unit's decision "
        "threshold (0.5, or chosen on validation with --threshold val); AUC does not depend on it.",
        "val σ: singular values of the modality matrix on the validation subjects at the selected epoch, mean over "
        "units (multimodal models only).",
    ]
    if "simulated_data" in table and table["simulated_data"].any():
        notes.append("Rows ran on the generated ABIDE-like cohort (no --data-dir): a pipeline check, not a result.")
    if "leaky" in table and table["leaky"].any():
        notes.append("Leaky (ComBat fitted on all subjects with diagnosis): "
                     + ", ".join(table.loc[table["leaky"].astype(bool), "method"].astype(str)) + ".")
    return "\n".join(lines) + "\n\n" + "\n".join(f"> {n}" for n in notes) + "\n"


def _table_ratio(table: pd.DataFrame) -> float | None:
    if "test_train_ratio" not in table:
        return None
    ratios = [r for r in table["test_train_ratio"] if r is not None and math.isfinite(r)]
    return float(ratios[0]) if ratios else None


def write_compare_table(table: pd.DataFrame, out_dir: str | os.PathLike[str], reference: str, name: str = "compare",
                        *, title: str | None = None, notes: Sequence[str] = (),
                        metrics: Mapping[str, str] = DEFAULT_METRICS) -> tuple[Path, Path]:
    """Write ``<name>.md`` and ``<name>.csv`` atomically; returns their paths."""
    out = Path(out_dir)
    text = compare_markdown(table, reference, metrics)
    if title:
        text = f"## {title}\n\n{text}"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    md_path, csv_path = out / f"{name}.md", out / f"{name}.csv"
    atomic_write_text(md_path, text)
    atomic_write_text(csv_path, table.to_csv(index=False))
    return md_path, csv_path
