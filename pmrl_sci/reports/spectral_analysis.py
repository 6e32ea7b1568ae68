"""Spectral analyses of trained runs: the paper's figures, from run folders, for several methods side by side.

Inputs are run folders of a task front end (``python -m pmrl_sci.abide``):

- ``metrics.jsonl``: one record per unit (trial/fold) and epoch with ``val_sigma_mean`` (the k
  singular values of the modality matrix, mean over validation instances), and where the front
  end records them ``val_u1_cosine`` (mean cosine between leading directions u1 of different
  instances) and ``val_v_abs_mean`` (k x k mean |V| over instances);
- ``done/<unit>.json``: ``test_sigma`` (singular values per test instance) and, where recorded,
  ``test_v_abs_mean``.

Figures (PNG, written atomically):

- ``singular_values_by_method``: sigma_1..sigma_k per epoch, mean over units, one panel per
  method (GRAM drives one value down; PMRL lowers sigma_2..sigma_k together while sigma_1 rises);
- ``sigma1_distribution``: the distribution of sigma_1 over the test instances of every unit;
- ``u1_cosine``: mean cosine between leading directions over training;
- ``modality_contribution``: mean |V| (rows: modalities, columns: singular directions).

Methods whose runs have fewer than two modalities (no modality matrix) are left out of every
figure; a figure with no data at all is not written (its entry in the report says why).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pmrl_sci.io import atomic_write_json, read_jsonl  # noqa: E402
from pmrl_sci.runs import RunFolder  # noqa: E402

SIGMA_KEY = "val_sigma_mean"
COSINE_KEY = "val_u1_cosine"
V_KEY = "val_v_abs_mean"
TEST_SIGMA_KEY = "test_sigma"
TEST_V_KEY = "test_v_abs_mean"


@dataclass
class RunData:
    """What the analyses read from one run folder.

    Attributes
    ----------
    name : str
        Display name (the method).
    path : Path
        The run folder.
    modalities : list of str
        Modality order of the singular vectors (from results.json or config.json; empty if unknown).
    records : list of dict
        ``metrics.jsonl``.
    done : dict of str to dict
        ``done/<unit>.json`` payloads by unit name.
    """

    name: str
    path: Path
    modalities: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_run(path: str | os.PathLike[str], name: str | None = None) -> RunData:
    """Read a run folder's metrics, finished units and modality order.

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a folder or holds neither ``metrics.jsonl`` nor ``done/``.
    """
    import json

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder {folder} does not exist")
    records = read_jsonl(folder / "metrics.jsonl")
    done = {}
    for file in sorted((folder / "done").glob("*.json")):
        try:
            done[file.stem] = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: not valid JSON ({exc})") from None
    if not records and not done:
        raise FileNotFoundError(f"{folder}: neither metrics.jsonl nor done/*.json (not a run folder, or not started)")
    modalities: list[str] = []
    for meta in ("results.json", "config.json"):
        file = folder / meta
        if file.is_file():
            value = json.loads(file.read_text(encoding="utf-8")).get("modalities")
            if isinstance(value, list):
                modalities = [str(m) for m in value]
                break
    return RunData(name=name or folder.name, path=folder, modalities=modalities, records=records, done=done)


def epoch_series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-epoch mean over units of a recorded value (scalar, vector or matrix).

    Parameters
    ----------
    records : sequence of mapping
        ``metrics.jsonl`` records with ``epoch``, ``unit`` and ``key``.
    key : str
        The field to average; records without it (or with None) are ignored.

    Returns
    -------
    epochs : ndarray [E]
        Epochs with at least one value, ascending.
    mean : ndarray [E, ...]
        Mean over the units that reached each epoch (units stop early at different epochs).
    count : ndarray [E]
        How many units contributed to each epoch.
    """
    by_epoch: dict[int, list[np.ndarray]] = {}
    for record in records:
        value = record.get(key)
        if value is None or "epoch" not in record:
            continue
        by_epoch.setdefault(int(record["epoch"]), []).append(np.asarray(value, dtype=float))
    if not by_epoch:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=int)
    epochs = np.array(sorted(by_epoch))
    shapes = {v.shape for values in by_epoch.values() for v in values}
    if len(shapes) != 1:
        raise ValueError(f"field {key!r} has inconsistent shapes across records: {sorted(shapes)}")
    mean = np.stack([np.mean(by_epoch[e], axis=0) for e in epochs])
    count = np.array([len(by_epoch[e]) for e in epochs])
    return epochs, mean, count


def pooled_test_sigma(run: RunData) -> np.ndarray | None:
    """Singular values of every test instance, pooled over units ``[N, k]``; None if not recorded."""
    rows = [np.asarray(p[TEST_SIGMA_KEY], dtype=float) for p in run.done.values() if p.get(TEST_SIGMA_KEY)]
    if not rows:
        return None
    ks = {r.shape[1] for r in rows if r.ndim == 2}
    if len(ks) != 1 or any(r.ndim != 2 for r in rows):
        raise ValueError(f"{run.path}/done: field {TEST_SIGMA_KEY!r} must be [instances, k] with one k in every unit")
    return np.concatenate(rows, axis=0)


def modality_contribution(run: RunData) -> tuple[np.ndarray, str] | None:
    """Mean |V| (k x k: modality x direction) and its source.

    The test-set value of the finished units (``test_v_abs_mean``, averaged over units) when
    recorded, else the validation value of each unit's last epoch (``val_v_abs_mean``). None
    when neither is recorded.
    """
    tests = [np.asarray(p[TEST_V_KEY], dtype=float) for p in run.done.values() if p.get(TEST_V_KEY) is not None]
    if tests:
        return np.mean(tests, axis=0), "test"
    last: dict[str, tuple[int, np.ndarray]] = {}
    for record in run.records:
        if record.get(V_KEY) is None:
            continue
        unit, epoch = str(record.get("unit", "")), int(record.get("epoch", 0))
        if unit not in last or epoch >= last[unit][0]:
            last[unit] = (epoch, np.asarray(record[V_KEY], dtype=float))
    if not last:
        return None
    return np.mean([v for _, v in last.values()], axis=0), "validation, last epoch"


def _panels(n: int, width: float = 3.6, height: float = 3.2) -> tuple[Any, list[Any]]:
    figure, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, layout="constrained")
    return figure, list(axes[0])


def plot_sigma_trajectories(runs: Sequence[RunData], out: RunFolder, name: str = "singular_values_by_method"
                            ) -> Path | None:
    """All singular values per epoch (mean over validation instances and units), one panel per method."""
    series = [(run, *epoch_series(run.records, SIGMA_KEY)) for run in runs]
    series = [s for s in series if s[1].size]
    if not series:
        return None
    figure, axes = _panels(len(series))
    top = max(float(np.sqrt(s[2].shape[1])) for s in series)
    for axis, (run, epochs, mean, _) in zip(axes, series):
        for j in range(mean.shape[1]):
            axis.plot(epochs, mean[:, j], marker="o" if len(epochs) < 8 else None, ms=3, label=f"$\\sigma_{j + 1}$")
        axis.axhline(np.sqrt(mean.shape[1]), ls="--", c="grey", lw=0.8)
        axis.set(title=run.name, xlabel="epoch", ylim=(0, top * 1.05))
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.legend(fontsize=7)
    axes[0].set_ylabel("singular value (validation mean)")
    figure.suptitle("singular values over training (dashed: $\\sqrt{k}$, full alignment)", fontsize=9)
    return out.save_figure(figure, name)


def plot_sigma1_distribution(runs: Sequence[RunData], out: RunFolder, name: str = "sigma1_distribution"
                             ) -> Path | None:
    """Distribution of sigma_1 over the test instances (all units pooled), one violin per method."""
    data = [(run.name, s[:, 0]) for run in runs if (s := pooled_test_sigma(run)) is not None and len(s)]
    if not data:
        return None
    figure, axis = plt.subplots(figsize=(1.3 * len(data) + 2.5, 3.6))
    positions = np.arange(1, len(data) + 1)
    spread = [i for i, (_, v) in enumerate(data) if len(v) > 1 and np.ptp(v) > 1e-9]
    if spread:
        axis.violinplot([data[i][1] for i in spread], positions=positions[spread], showmeans=True, widths=0.8)
    rng = np.random.default_rng(0)
    for position, (_, values) in zip(positions, data):
        axis.scatter(position + rng.uniform(-0.08, 0.08, len(values)), values, s=6, c="k", alpha=0.4)
    axis.set_xticks(positions, [n for n, _ in data], rotation=20)
    axis.set(ylabel="$\\sigma_1$ (test instances)", title="distribution of $\\sigma_1$ on the test set")
    return out.save_figure(figure, name)


def plot_u1_cosine(runs: Sequence[RunData], out: RunFolder, name: str = "u1_cosine") -> Path | None:
    """Mean cosine similarity between leading directions u1 of different instances, per epoch."""
    series = [(run.name, *epoch_series(run.records, COSINE_KEY)[:2]) for run in runs]
    series = [s for s in series if s[1].size]
    if not series:
        return None
    figure, axis = plt.subplots(figsize=(5.5, 3.8))
    for label, epochs, mean in series:
        axis.plot(epochs, mean, marker="o" if len(epochs) < 8 else None, ms=3, label=label)
    axis.set(xlabel="epoch", ylabel="mean cos(u1(i), u1(j)), i != j", title="similarity of leading directions")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize=7)
    return out.save_figure(figure, name)


def plot_modality_contribution(runs: Sequence[RunData], out: RunFolder, name: str = "modality_contribution"
                               ) -> Path | None:
    """Heat maps of mean |V| (rows: modalities, columns: singular directions), one per method."""
    data = [(run, *found) for run in runs if (found := modality_contribution(run)) is not None]
    if not data:
        return None
    figure, axes = _panels(len(data), width=3.4, height=3.2)
    image = None
    for axis, (run, v, source) in zip(axes, data):
        k = v.shape[0]
        image = axis.imshow(v, vmin=0.0, vmax=1.0, cmap="viridis")
        for (m, j), value in np.ndenumerate(v):
            axis.text(j, m, f"{value:.2f}", ha="center", va="center", fontsize=7, c="w" if value < 0.6 else "k")
        labels = run.modalities if len(run.modalities) == k else [f"m{m + 1}" for m in range(k)]
        axis.set_xticks(range(v.shape[1]), [f"$v_{j + 1}$" for j in range(v.shape[1])])
        axis.set_yticks(range(k), labels)
        axis.set_title(f"{run.name}\n({source})", fontsize=8)
    figure.colorbar(image, ax=axes, shrink=0.8, label="mean |V|")
    return out.save_figure(figure, name)


@dataclass
class AnalysisReport:
    """Figures written (None: no data, see ``missing``) and the numbers behind them."""

    figures: dict[str, Path | None]
    missing: dict[str, str]
    summary: dict[str, Any]


def summarize_run(run: RunData) -> dict[str, Any]:
    """Numbers behind the figures for one run: final spectrum, test sigma, cosine, |V|."""
    out: dict[str, Any] = {"path": str(run.path), "modalities": run.modalities}
    epochs, mean, _ = epoch_series(run.records, SIGMA_KEY)
    if epochs.size:
        out["val_sigma_first_epoch"] = mean[0].tolist()
        out["val_sigma_last_epoch"] = mean[-1].tolist()
    sigma = pooled_test_sigma(run)
    if sigma is not None:
        out["test_sigma_mean"] = sigma.mean(axis=0).tolist()
        out["test_sigma1"] = {"mean": float(sigma[:, 0].mean()), "std": float(sigma[:, 0].std()),
                              "n": int(len(sigma))}
    epochs, cosine, _ = epoch_series(run.records, COSINE_KEY)
    if epochs.size:
        out["val_u1_cosine_first_epoch"], out["val_u1_cosine_last_epoch"] = float(cosine[0]), float(cosine[-1])
    contribution = modality_contribution(run)
    if contribution is not None:
        out["v_abs_mean"], out["v_abs_mean_source"] = contribution[0].tolist(), contribution[1]
    return out


def analyse_runs(runs: Mapping[str, str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> AnalysisReport:
    """Write the four analysis figures and ``analysis.json`` for ``{method: run folder}`` into ``out_dir``.

    Parameters
    ----------
    runs : mapping of str to path-like
        Method name to run folder, in display order.
    out_dir : path-like
        Where the figures and ``analysis.json`` go (created if missing).
    """
    if not runs:
        raise ValueError("analyse_runs: no run folders given")
    loaded = [load_run(path, name) for name, path in runs.items()]
    out = RunFolder(out_dir)
    figures = {
        "singular_values_by_method": plot_sigma_trajectories(loaded, out),
        "sigma1_distribution": plot_sigma1_distribution(loaded, out),
        "u1_cosine": plot_u1_cosine(loaded, out),
        "modality_contribution": plot_modality_contribution(loaded, out),
    }
    reasons = {
        "singular_values_by_method": f"no run recorded {SIGMA_KEY!r} (fewer than two modalities?)",
        "sigma1_distribution": f"no finished unit recorded {TEST_SIGMA_KEY!r}",
        "u1_cosine": f"no run recorded {COSINE_KEY!r} (front end without the u1-cosine record?)",
        "modality_contribution": f"no run recorded {TEST_V_KEY!r} or {V_KEY!r}",
    }
    missing = {k: reasons[k] for k, v in figures.items() if v is None}
    summary = {run.name: summarize_run(run) for run in loaded}
    atomic_write_json(Path(out_dir) / "analysis.json",
                      {"runs": summary, "figures": {k: str(v) if v else None for k, v in figures.items()},
                       "missing": missing})
    return AnalysisReport(figures=figures, missing=missing, summary=summary)


def plot_metric_curves(table: Any, out: RunFolder, x: str, panel: str, metrics: Mapping[str, str],
                       name: str = "noise_curves", scale: float = 100.0, xlabel: str | None = None) -> Path | None:
    """Metric against a swept level, one line per method (error bars: std over trials).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`pmrl_sci.reports.tables.collect_table`, with a numeric column ``x`` (the level), a
        column ``panel`` (e.g. the noise kind: one row of panels per value), ``method`` and
        ``<metric>_mean`` / ``<metric>_std``.
    out : RunFolder
        Where the PNG goes.
    x, panel : str
        Column names.
    metrics : mapping of str to str
        Metric field to axis title (one column of panels per metric).
    scale : float
        Multiplier of the values (100: percent).
    xlabel : str, optional
        X-axis title (default ``x``).
    """
    if table is None or len(table) == 0:
        return None
    kinds = list(dict.fromkeys(table[panel]))
    figure, axes = plt.subplots(len(kinds), len(metrics), figsize=(4.0 * len(metrics), 3.2 * len(kinds)),
                                squeeze=False, layout="constrained")
    for r, kind in enumerate(kinds):
        part = table[table[panel] == kind]
        for c, (metric, title) in enumerate(metrics.items()):
            axis = axes[r][c]
            for method in dict.fromkeys(part["method"]):
                rows = part[part["method"] == method].sort_values(x)
                axis.errorbar(rows[x].astype(float), rows[f"{metric}_mean"] * scale, yerr=rows[f"{metric}_std"] * scale,
                              marker="o", ms=3, capsize=2, label=str(method))
            axis.set(xlabel=f"{xlabel or x} ({kind})", ylabel=f"{title}{' (%)' if scale == 100.0 else ''}")
            if scale == 100.0:
                axis.set_ylim(0, 102)
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return out.save_figure(figure, name)
