"""ComBat harmonisation across sites (Johnson et al. 2007; Fortin et al. 2017/2018) as an estimator.

The fit follows ``neuroCombat.neuroCombat`` (PyPI ``neuroCombat`` 0.2.12) step by step and reuses its
prior formulas (``aprior``, ``bprior``, ``postmean``, ``postvar``):

1. design ``[site one-hot | categorical one-hot without the first level | continuous]``; per-feature
   least squares ``B``; grand mean = site intercepts weighted by site size; pooled variance = mean
   squared residual (divided by n, as neuroCombat);
2. standardise ``s = (x - grand_mean - covariate_effect) / sqrt(var_pooled)``;
3. per-site location ``gamma_hat`` (mean of ``s``) and scale ``delta_hat`` (variance, ddof 1);
4. empirical Bayes shrinkage (parametric: iterate the posterior mean / variance; non-parametric:
   leave-one-feature-out likelihood weighting) or the raw estimates (``eb=False``);
5. ``x* = (s - gamma*) / sqrt(delta*) * sqrt(var_pooled) + grand_mean + covariate_effect``.

Differences from neuroCombat, all on inputs where neuroCombat fails or misbehaves:

* ``transform`` on new subjects: ``neuroCombatFromTraining`` raises ``TypeError: only 0-dimensional
  arrays can be converted to Python scalars`` on NumPy 2 (it calls ``int()`` on the 1-element array
  that ``np.where`` returns), and it ignores the new subjects' covariates (it adds back the *training
  average* covariate effect and divides the new subjects' own covariate deviation by ``sqrt(delta*)``), so
  it does not reproduce the fit on the training subjects. Here each subject's own covariate effect is
  removed and restored, so ``transform(X_train) == fit_transform(X_train)``.
* A site with ONE subject makes neuroCombat's whole output NaN: its ``delta_hat`` (variance with ddof 1)
  is NaN, so its ``gamma_star``/``delta_star`` are NaN, and ``adjust_data_final`` multiplies the site
  one-hot design by the full ``gamma_star`` matrix (``0 * NaN = NaN`` for every subject). Here such a site
  is left UNADJUSTED (``gamma* = 0``, ``delta* = 1``: its subject is returned as given) with a warning:
  one subject cannot separate a site effect from its own deviation, and a location-only correction would
  erase that subject's individual signal.
* A covariate confounded with site (or with the covariates before it) makes ``design.T @ design``
  singular (neuroCombat inverts it and returns garbage or raises). Here the design is built column block
  by column block and a covariate whose columns do not raise the rank is dropped, with a warning naming it.
* Features with zero pooled variance (e.g. an aseg structure that is 0 for everyone) are passed through
  unchanged and kept out of the empirical Bayes priors (neuroCombat replaces their variance with
  ``median(var != 0)`` and keeps them in the priors).
* The parametric iteration stops on the relative change ``|new - old| / |old|`` over all features
  (neuroCombat divides by the signed old value, so features with a negative ``gamma`` never count, and a
  zero ``gamma`` aborts the loop with NaN); the non-parametric weights are computed in log space
  (neuroCombat's likelihood underflows to 0/0 for large sites).
* NaN in ``X`` or in a covariate is an error naming the columns (neuroCombat silently propagates NaN).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from neuroCombat.neuroCombat import aprior, bprior, postmean, postvar
from sklearn.base import BaseEstimator

__all__ = ["ComBat"]


@dataclass
class _Covariate:
    """One covariate of the design: its name, kind and (categorical) level list."""

    name: str
    kind: str  # "categorical" or "continuous"
    levels: list[Any] | None = None

    def columns(self, values: pd.Series, where: str) -> np.ndarray:
        """Design columns for ``values`` (one-hot without the first level, or the numeric column)."""
        if self.kind == "continuous":
            return values.to_numpy(dtype=np.float64)[:, None]
        assert self.levels is not None
        codes = {level: i for i, level in enumerate(self.levels)}
        unknown = sorted({str(v) for v in values if v not in codes})
        if unknown:
            raise ValueError(f"{where}: categorical covariate {self.name!r} has level(s) {unknown} not seen in "
                             f"fit (levels {[str(v) for v in self.levels]})")
        onehot = np.zeros((len(values), len(self.levels)), dtype=np.float64)
        onehot[np.arange(len(values)), [codes[v] for v in values]] = 1.0
        return onehot[:, 1:]


def _sorted_levels(values: pd.Series) -> list[Any]:
    """Sorted unique values, as ``np.unique`` sorts them in neuroCombat (strings when types mix)."""
    try:
        return list(np.unique(np.asarray(values, dtype=object)))
    except TypeError:
        return sorted(set(values), key=str)


class ComBat(BaseEstimator):
    """ComBat harmonisation of features across sites, fitted on some subjects and applied to others.

    Parameters
    ----------
    parametric : bool
        Parametric empirical Bayes (normal / inverse-gamma priors); ``False``: non-parametric.
    eb : bool
        Shrink the site estimates by empirical Bayes; ``False`` uses the raw per-site estimates.
    mean_only : bool
        Adjust the site location only (``delta* = 1``).
    unseen_site : {"error", "passthrough", "estimate"}
        ``transform`` on a site absent from fit: raise (default); return those subjects unadjusted
        with a warning (``"passthrough"``: with ``gamma* = 0, delta* = 1`` the standardisation and its
        inverse cancel); or (``"estimate"``) estimate that site's location and scale from its own subjects in
        the ``X`` given to ``transform`` (no labels needed): the standard ComBat estimation for one new batch
        with the fit's grand mean, pooled variance and covariate coefficients held fixed, i.e. the model of
        ``neuroCombatFromTraining`` (standardise with the training fit, then ``gamma_hat``/``delta_hat`` and
        the same empirical Bayes shrinkage, its priors from that site's own estimates). A new site with one
        subject is left unadjusted, as in fit.
    conv : float
        Convergence threshold of the parametric iteration (relative change, neuroCombat's 1e-4).
    max_iter : int
        Iteration cap of the parametric iteration.

    Attributes
    ----------
    sites_ : numpy.ndarray of str
        Site labels seen in fit (sorted).
    site_counts_ : numpy.ndarray of int
        Subjects per site in fit.
    covariates_ : list of str
        Covariates kept in the design; ``dropped_covariates_`` maps the dropped ones to the reason.
    grand_mean_, var_pooled_ : numpy.ndarray, shape (n_features,)
    beta_ : numpy.ndarray, shape (n_covariate_columns, n_features)
        Covariate coefficients (the design columns after the site one-hot).
    gamma_hat_, delta_hat_, gamma_star_, delta_star_ : numpy.ndarray, shape (n_sites, n_features)
    singleton_sites_ : list of str
        Sites with one subject in fit (left unadjusted).
    constant_features_ : numpy.ndarray of bool
        Features with zero pooled variance (passed through).
    feature_names_in_ : numpy.ndarray of str
        Only when ``X`` was a DataFrame.
    unseen_sites_ : dict of str to int
        After ``transform``: the sites absent from fit in its input and their subject counts.
    """

    def __init__(self, parametric: bool = True, eb: bool = True, mean_only: bool = False,
                 unseen_site: str = "error", conv: float = 1e-4, max_iter: int = 1000) -> None:
        self.parametric = parametric
        self.eb = eb
        self.mean_only = mean_only
        self.unseen_site = unseen_site
        self.conv = conv
        self.max_iter = max_iter

    # ------------------------------------------------------------------------------------------------------------
    # input checks
    # ------------------------------------------------------------------------------------------------------------
    def _check_X(self, X: Any, fitting: bool) -> np.ndarray:
        if isinstance(X, pd.DataFrame):
            names = np.asarray([str(c) for c in X.columns], dtype=object)
            non_numeric = [str(c) for c, dt in X.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)]
            if non_numeric:
                raise ValueError(f"X: non-numeric feature column(s) {non_numeric[:10]}")
            values = X.to_numpy(dtype=np.float64)
        else:
            names = None
            values = np.asarray(X, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
            raise ValueError(f"X: expected a non-empty 2-D array [n_subjects, n_features], got shape {values.shape}")
        bad = ~np.isfinite(values)
        if bad.any():
            cols = np.flatnonzero(bad.any(axis=0))
            labels = [str(names[j]) for j in cols] if names is not None else [int(j) for j in cols]
            raise ValueError(f"X: {int(bad.sum())} NaN/inf value(s) in {len(cols)} feature column(s) "
                             f"{labels[:10]}{' ...' if len(cols) > 10 else ''}; ComBat needs complete data "
                             "(impute or drop these features/subjects first)")
        if fitting:
            self.n_features_in_ = values.shape[1]
            if names is not None:
                self.feature_names_in_ = names
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            if values.shape[1] != self.n_features_in_:
                raise ValueError(f"X: {values.shape[1]} features, ComBat was fitted on {self.n_features_in_}")
            fitted_names = getattr(self, "feature_names_in_", None)
            if names is not None and fitted_names is not None and list(names) != list(fitted_names):
                diff = [n for n in fitted_names if n not in set(names)][:5]
                raise ValueError(f"X: feature columns differ from fit (missing e.g. {diff}; order must match)")
        return values

    @staticmethod
    def _check_sites(sites: Any, n: int) -> np.ndarray:
        raw = pd.Series(np.asarray(sites, dtype=object).ravel())
        if len(raw) != n:
            raise ValueError(f"sites: {len(raw)} labels for {n} subjects")
        if raw.isna().any():
            rows = np.flatnonzero(raw.isna().to_numpy())[:10].tolist()
            raise ValueError(f"sites: missing site label at row(s) {rows}")
        return raw.astype(str).to_numpy(dtype=object)

    @staticmethod
    def _check_covariates(covariates: pd.DataFrame | None, names: Sequence[str], n: int,
                          x_index: pd.Index | None = None) -> pd.DataFrame:
        if not names:
            return pd.DataFrame(index=range(n))
        if covariates is None:
            raise ValueError(f"covariates: None, but covariate column(s) {list(names)} were requested")
        if not isinstance(covariates, pd.DataFrame):
            raise ValueError(f"covariates: expected a pandas DataFrame, got {type(covariates).__name__}")
        if len(covariates) != n:
            raise ValueError(f"covariates: {len(covariates)} rows for {n} subjects (rows must align with X)")
        if (x_index is not None and not covariates.index.equals(x_index)
                and set(covariates.index) == set(x_index)):
            raise ValueError("covariates: same row labels as X but in another order; rows are matched by "
                             "position, so reindex first (covariates.loc[X.index])")
        missing = [c for c in names if c not in covariates.columns]
        if missing:
            raise ValueError(f"covariates: column(s) {missing} not found; columns are {list(covariates.columns)}")
        table = covariates.loc[:, list(names)].reset_index(drop=True)
        for column in names:
            na = table[column].isna().to_numpy()
            if na.any():
                raise ValueError(f"covariates: column {column!r} has missing values at row(s) "
                                 f"{np.flatnonzero(na)[:10].tolist()}")
        return table

    # ------------------------------------------------------------------------------------------------------------
    # fit
    # ------------------------------------------------------------------------------------------------------------
    def fit(self, X: Any, sites: Any, covariates: pd.DataFrame | None = None, categorical: Sequence[str] = (),
            continuous: Sequence[str] = ()) -> ComBat:
        """Estimate the site effects.

        Parameters
        ----------
        X : array-like or pandas.DataFrame, shape (n_subjects, n_features)
            Features (no NaN).
        sites : array-like, shape (n_subjects,)
            Site label of each subject (compared as strings).
        covariates : pandas.DataFrame, optional
            Rows aligned with ``X`` (by position); other columns are ignored.
        categorical, continuous : sequence of str
            Covariate columns whose effect is preserved (e.g. ``["sex"]``, ``["age"]``).

        Returns
        -------
        ComBat
            ``self``.
        """
        self._fit(X, sites, covariates, categorical, continuous)
        return self

    def fit_transform(self, X: Any, sites: Any, covariates: pd.DataFrame | None = None,
                      categorical: Sequence[str] = (), continuous: Sequence[str] = ()) -> Any:
        """Fit, then return the harmonised training data (same type as ``X``).

        Parameters
        ----------
        X, sites, covariates, categorical, continuous
            As :meth:`fit`.

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            Harmonised ``X``, computed from the fit's own standardised data.
        """
        adjusted = self._fit(X, sites, covariates, categorical, continuous)
        return self._wrap(X, adjusted)

    def _fit(self, X: Any, sites: Any, covariates: pd.DataFrame | None, categorical: Sequence[str],
             continuous: Sequence[str]) -> np.ndarray:
        if self.unseen_site not in ("error", "passthrough", "estimate"):
            raise ValueError(f"unseen_site must be 'error', 'passthrough' or 'estimate', got {self.unseen_site!r}")
        categorical, continuous = list(categorical), list(continuous)
        both = sorted(set(categorical) & set(continuous))
        if both:
            raise ValueError(f"covariate(s) {both} listed as both categorical and continuous")
        x = self._check_X(X, fitting=True)
        n, p = x.shape
        site_labels = self._check_sites(sites, n)
        table = self._check_covariates(covariates, categorical + continuous, n, _index_of(X))
        for column in continuous:
            if not pd.api.types.is_numeric_dtype(table[column]):
                raise ValueError(f"covariates: continuous column {column!r} is not numeric "
                                 f"(dtype {table[column].dtype})")

        self.sites_, site_index, self.site_counts_ = np.unique(site_labels, return_inverse=True, return_counts=True)
        n_sites = len(self.sites_)
        design = np.zeros((n, n_sites))
        design[np.arange(n), site_index] = 1.0
        self._covariates: list[_Covariate] = []
        self.dropped_covariates_: dict[str, str] = {}
        for name, kind in [(c, "categorical") for c in categorical] + [(c, "continuous") for c in continuous]:
            cov = _Covariate(name, kind, _sorted_levels(table[name]) if kind == "categorical" else None)
            block = cov.columns(table[name], "covariates")
            if block.shape[1] == 0:
                self.dropped_covariates_[name] = "a single level in the fit data"
                continue
            candidate = np.hstack([design, block])
            if _rank(candidate) < candidate.shape[1]:
                self.dropped_covariates_[name] = "confounded with site or with the covariates before it"
                continue
            design = candidate
            self._covariates.append(cov)
        if self.dropped_covariates_:
            warnings.warn("ComBat: dropped covariate(s) "
                          + "; ".join(f"{k!r} ({v})" for k, v in self.dropped_covariates_.items())
                          + ": their effect cannot be separated from the site effect", stacklevel=3)
        self.covariates_ = [c.name for c in self._covariates]

        coef = np.linalg.solve(design.T @ design, design.T @ x)  # [n_columns, p]
        self.site_intercepts_ = coef[:n_sites]
        self.beta_ = coef[n_sites:]
        self.grand_mean_ = (self.site_counts_ / float(n)) @ self.site_intercepts_
        var_pooled = np.mean((x - design @ coef) ** 2, axis=0)
        scale = np.max(np.abs(x), axis=0)
        self.constant_features_ = (np.ptp(x, axis=0) == 0) | (var_pooled <= (1e-10 * scale) ** 2)
        self.var_pooled_ = np.where(self.constant_features_, 1.0, var_pooled)
        mod_mean = design[:, n_sites:] @ self.beta_
        s = (x - self.grand_mean_ - mod_mean) / np.sqrt(self.var_pooled_)

        self._estimate_site_effects(s, site_index)
        adjusted = (s - self.gamma_star_[site_index]) / np.sqrt(self.delta_star_[site_index])
        return adjusted * np.sqrt(self.var_pooled_) + self.grand_mean_ + mod_mean

    def _estimate_site_effects(self, s: np.ndarray, site_index: np.ndarray) -> None:
        n_sites, p = len(self.sites_), s.shape[1]
        active = ~self.constant_features_
        singletons = self.site_counts_ < 2
        self.singleton_sites_ = [str(self.sites_[i]) for i in np.flatnonzero(singletons)]
        if self.singleton_sites_:
            warnings.warn(f"ComBat: site(s) {self.singleton_sites_} have a single subject in the fit data; they are "
                          "left unadjusted (one subject cannot separate a site effect from its own deviation)",
                          stacklevel=4)
        if self.eb and active.sum() < 2:
            raise ValueError(f"ComBat: empirical Bayes needs at least 2 non-constant features, got "
                             f"{int(active.sum())}; use eb=False")
        self.gamma_hat_ = np.zeros((n_sites, p))
        self.delta_hat_ = np.ones((n_sites, p))
        self.gamma_star_ = np.zeros((n_sites, p))
        self.delta_star_ = np.ones((n_sites, p))
        for i in range(n_sites):
            estimates = self._one_site(s[site_index == i], active)
            self.gamma_hat_[i], self.delta_hat_[i], self.gamma_star_[i], self.delta_star_[i] = estimates

    def _one_site(self, rows: np.ndarray, active: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``gamma_hat, delta_hat, gamma_star, delta_star`` of one site from its standardised ``rows``.

        A single subject gives ``gamma* = 0, delta* = 1`` (left unadjusted); inactive (constant) features too.
        """
        p = rows.shape[1]
        gamma_hat, delta_hat = rows.mean(axis=0), np.ones(p)
        gamma_star, delta_star = np.zeros(p), np.ones(p)
        if rows.shape[0] < 2:
            return gamma_hat, delta_hat, gamma_star, delta_star
        if not self.mean_only:
            delta = rows.var(axis=0, ddof=1)
            delta_hat = np.where(delta == 0, 1.0, delta)  # neuroCombat's convert_zeroes
        g_hat, d_hat = gamma_hat[active], delta_hat[active]
        if not self.eb:
            g_star, d_star = g_hat, d_hat
        elif self.parametric:
            g_star, d_star = self._parametric(rows[:, active], g_hat, d_hat)
        else:
            g_star, d_star = _non_parametric(rows[:, active], g_hat, d_hat)
        gamma_star[active], delta_star[active] = g_star, d_star
        return gamma_hat, delta_hat, gamma_star, delta_star

    def _parametric(self, rows: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """neuroCombat's ``find_parametric_adjustments`` for one site (``it_sol`` with a sound stop rule)."""
        g_bar, t2 = float(np.mean(g_hat)), float(np.var(g_hat, ddof=1))
        if self.mean_only:
            return postmean(g_hat, g_bar, 1, 1, t2), np.ones_like(d_hat)
        a, b = aprior(d_hat), bprior(d_hat)
        n = rows.shape[0]
        g_old, d_old = g_hat.copy(), d_hat.copy()
        for _ in range(self.max_iter):
            g_new = postmean(g_hat, g_bar, n, d_old, t2)
            d_new = postvar(((rows - g_new) ** 2).sum(axis=0), n, a, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                change = np.concatenate([np.abs(g_new - g_old) / np.abs(g_old), np.abs(d_new - d_old) / d_old])
            g_old, d_old = g_new, d_new
            change = change[np.isfinite(change)]
            if change.size == 0 or change.max() <= self.conv:
                break
        else:
            warnings.warn(f"ComBat: parametric empirical Bayes did not converge in {self.max_iter} iterations",
                          stacklevel=5)
        return g_old, d_old

    # ------------------------------------------------------------------------------------------------------------
    # transform
    # ------------------------------------------------------------------------------------------------------------
    def transform(self, X: Any, sites: Any, covariates: pd.DataFrame | None = None) -> Any:
        """Harmonise new subjects with the fitted estimates.

        Parameters
        ----------
        X : array-like or pandas.DataFrame, shape (n_subjects, n_features)
            Same features (and column order) as in fit.
        sites : array-like, shape (n_subjects,)
            Site labels; a site absent from fit follows ``unseen_site``.
        covariates : pandas.DataFrame, optional
            Must hold the covariates kept in fit (``covariates_``), rows aligned with ``X``.

        Returns
        -------
        numpy.ndarray or pandas.DataFrame
            Harmonised ``X`` (same type, index and columns).
        """
        if not hasattr(self, "gamma_star_"):
            raise RuntimeError("ComBat.transform called before fit")
        x = self._check_X(X, fitting=False)
        n = x.shape[0]
        site_labels = self._check_sites(sites, n)
        table = self._check_covariates(covariates, self.covariates_, n, _index_of(X))
        if self._covariates:
            mod_mean = np.hstack([c.columns(table[c.name], "covariates") for c in self._covariates]) @ self.beta_
        else:
            mod_mean = np.zeros_like(x)
        lookup = {str(site): i for i, site in enumerate(self.sites_)}
        site_index = np.array([lookup.get(site, -1) for site in site_labels])
        unseen = site_index < 0
        if unseen.any():
            names = sorted(set(site_labels[unseen]))
            if self.unseen_site == "error":
                raise ValueError(f"sites: {names} were not in the fit data (fitted sites {list(self.sites_)}); "
                                 "refit including them, or use ComBat(unseen_site='passthrough')")
            if self.unseen_site == "passthrough":
                warnings.warn(f"ComBat: site(s) {names} not seen in fit: {int(unseen.sum())} subject(s) returned "
                              "unadjusted", stacklevel=2)
        self.unseen_sites_ = {str(name): int((site_labels == name).sum()) for name in sorted(set(site_labels[unseen]))}
        gamma = np.where(unseen[:, None], 0.0, self.gamma_star_[np.maximum(site_index, 0)])
        delta = np.where(unseen[:, None], 1.0, self.delta_star_[np.maximum(site_index, 0)])
        s = (x - self.grand_mean_ - mod_mean) / np.sqrt(self.var_pooled_)
        passthrough = unseen.copy()
        if self.unseen_site == "estimate":  # each new site's own gamma*/delta* with the fit's pooled parameters
            for name in self.unseen_sites_:
                rows = site_labels == name
                _, _, gamma[rows], delta[rows] = self._one_site(s[rows], ~self.constant_features_)
                passthrough[rows] = rows.sum() < 2
        adjusted = (s - gamma) / np.sqrt(delta) * np.sqrt(self.var_pooled_) + self.grand_mean_ + mod_mean
        adjusted[passthrough] = x[passthrough]  # exact identity (no round-off) for unadjusted subjects
        return self._wrap(X, adjusted)

    @staticmethod
    def _wrap(X: Any, values: np.ndarray) -> Any:
        if isinstance(X, pd.DataFrame):
            return pd.DataFrame(values, index=X.index, columns=X.columns)
        return values

    # ------------------------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Fitted estimates as a JSON-serialisable dict (for a run folder); see :meth:`from_state`.

        Returns
        -------
        dict
            Parameters, site list, covariate specs and the estimate arrays as nested lists.
        """
        if not hasattr(self, "gamma_star_"):
            raise RuntimeError("ComBat.get_state called before fit")
        arrays = ("site_counts_", "site_intercepts_", "beta_", "grand_mean_", "var_pooled_", "gamma_hat_",
                  "delta_hat_", "gamma_star_", "delta_star_", "constant_features_")
        return {
            "params": self.get_params(),
            "sites": [str(s) for s in self.sites_],
            "covariates": [{"name": c.name, "kind": c.kind,
                            "levels": None if c.levels is None else [_json_scalar(v) for v in c.levels]}
                           for c in self._covariates],
            "dropped_covariates": dict(self.dropped_covariates_),
            "singleton_sites": list(self.singleton_sites_),
            "n_features_in": int(self.n_features_in_),
            "feature_names_in": None if not hasattr(self, "feature_names_in_") else list(self.feature_names_in_),
            **{name.rstrip("_"): getattr(self, name).tolist() for name in arrays},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ComBat:
        """Rebuild a fitted :class:`ComBat` from :meth:`get_state`'s dict.

        Parameters
        ----------
        state : dict
            As returned by :meth:`get_state` (possibly through JSON).

        Returns
        -------
        ComBat
            A fitted estimator whose ``transform`` equals the original's.
        """
        model = cls(**state["params"])
        model.sites_ = np.asarray(state["sites"], dtype=object)
        model._covariates = [_Covariate(c["name"], c["kind"], c["levels"]) for c in state["covariates"]]
        model.covariates_ = [c.name for c in model._covariates]
        model.dropped_covariates_ = dict(state["dropped_covariates"])
        model.singleton_sites_ = list(state["singleton_sites"])
        model.n_features_in_ = int(state["n_features_in"])
        if state.get("feature_names_in") is not None:
            model.feature_names_in_ = np.asarray(state["feature_names_in"], dtype=object)
        model.site_counts_ = np.asarray(state["site_counts"], dtype=np.int64)
        model.constant_features_ = np.asarray(state["constant_features"], dtype=bool)
        p = model.n_features_in_
        for name in ("site_intercepts", "beta", "grand_mean", "var_pooled", "gamma_hat", "delta_hat", "gamma_star",
                     "delta_star"):
            value = np.asarray(state[name], dtype=np.float64)
            if name == "beta":
                value = value.reshape(-1, p)
            setattr(model, name + "_", value)
        return model


def _index_of(X: Any) -> pd.Index | None:
    return X.index if isinstance(X, pd.DataFrame) else None


def _json_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _rank(matrix: np.ndarray) -> int:
    """Rank of a design after scaling each column to unit norm (so units do not matter)."""
    norms = np.linalg.norm(matrix, axis=0)
    return int(np.linalg.matrix_rank(matrix / np.where(norms > 0, norms, 1.0)))


def _non_parametric(rows: np.ndarray, g_hat: np.ndarray, d_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """neuroCombat's ``int_eprior`` for one site, with the likelihood weights computed in log space.

    For feature ``i``, the other features' ``(gamma_hat, delta_hat)`` pairs are weighted by the likelihood
    of feature ``i``'s standardised data under ``N(gamma_hat_j, delta_hat_j)``.
    """
    n, p = rows.shape
    # sum over subjects of (x_i - g_j)^2 for every pair (i, j): [p, p]
    sum2 = (rows ** 2).sum(axis=0)[:, None] - 2.0 * rows.sum(axis=0)[:, None] * g_hat[None, :] + n * g_hat[None, :] ** 2
    log_lh = -0.5 * n * np.log(2.0 * np.pi * d_hat)[None, :] - sum2 / (2.0 * d_hat[None, :])
    np.fill_diagonal(log_lh, -np.inf)
    log_lh -= log_lh.max(axis=1, keepdims=True)
    weights = np.exp(log_lh)
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ g_hat, weights @ d_hat
