"""Population-graph GCN baseline in the style of Parisot et al. (Medical Image Analysis, 2018).

Subjects are the nodes of one graph. Node features are imaging features (e.g. vectorised
connectivity) reduced by recursive feature elimination with a ridge classifier fitted on the
training nodes only. Edge ``(v, w)`` weighs the phenotypic agreement (same site + same sex +
ages within ``age_threshold`` years) times the feature similarity
``exp(-rho(v, w)^2 / (2 sigma^2))`` with ``rho`` the correlation distance and ``sigma`` its mean.
A two-layer Chebyshev GCN (polynomial degree 3, 16 hidden units, dropout 0.3, Adam 5e-3, weight decay 5e-4)
is trained transductively: the loss reads only the training nodes, the validation nodes pick the
epoch (early stopping on the validation loss), the test nodes are only predicted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import eigsh
from scipy.spatial.distance import pdist, squareform
from sklearn.feature_selection import RFE
from sklearn.linear_model import RidgeClassifier
from sklearn.preprocessing import StandardScaler, normalize
from torch import nn

from pmrl_sci.baselines import check_binary_labels, check_splits
from pmrl_sci.extras import require

_GCN = "the population-graph GCN baseline"
Data = require("torch_geometric.data", "neuro", _GCN).Data
ChebConv = require("torch_geometric.nn", "neuro", _GCN).ChebConv
get_laplacian = require("torch_geometric.utils", "neuro", _GCN).get_laplacian
to_scipy_sparse_matrix = require("torch_geometric.utils", "neuro", _GCN).to_scipy_sparse_matrix

__all__ = ["PopulationGCN", "PopulationGCNConfig", "build_population_graph", "chebyshev_basis",
           "fit_predict_population_gcn", "laplacian_lambda_max", "phenotype_scores", "scaled_laplacian",
           "select_features"]


@dataclass
class PopulationGCNConfig:
    """Settings of :func:`fit_predict_population_gcn` (defaults from Parisot et al. 2018).

    Parameters
    ----------
    n_selected : int
        Features kept by RFE (2000; all are kept when there are fewer).
    rfe_step : int or float
        Features removed per RFE iteration: an int is a count (Parisot et al. used 100, about
        180 ridge fits on ABIDE's 19,900 CC200 edges, minutes on a CPU), a float in (0, 1) that
        fraction of the original features (the default 0.1: about 9 fits).
    ridge_alpha : float
        Regularisation of the ridge classifier inside RFE.
    hidden : int
        Hidden units of the GCN.
    cheb_degree : int
        Degree of the Chebyshev polynomials (Parisot: 3, i.e. ``K = 4`` terms in PyG's ``ChebConv``).
    dropout : float
        Dropout before each graph convolution.
    lr, weight_decay : float
        Adam settings.
    patience : int
        Epochs without validation-loss improvement before stopping (0: no early stopping).
    age_threshold : float
        Two subjects' ages "match" when they differ by less than this (years).
    use_site, use_sex, use_age : bool
        Which phenotypes enter the edge weights (when given).
    """

    n_selected: int = 2000
    rfe_step: int | float = 0.1
    ridge_alpha: float = 1.0
    hidden: int = 16
    cheb_degree: int = 3
    dropout: float = 0.3
    lr: float = 5e-3
    weight_decay: float = 5e-4
    patience: int = 30
    age_threshold: float = 2.0
    use_site: bool = True
    use_sex: bool = True
    use_age: bool = True


def _column(values: np.ndarray | None, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected one value per subject, shape ({n},), got {arr.shape}")
    return arr


def phenotype_scores(n: int, sites: np.ndarray | None = None, sex: np.ndarray | None = None,
                     age: np.ndarray | None = None, age_threshold: float = 2.0) -> np.ndarray:
    """Pairwise phenotypic agreement: the number of matching phenotypes (0..3), ``[n, n]``.

    Site and sex match on equality (missing values never match); ages match when both are
    finite and differ by less than ``age_threshold``. With no phenotype at all every pair scores 1.
    """
    sites, sex, age = _column(sites, n, "sites"), _column(sex, n, "sex"), _column(age, n, "age")
    score = np.zeros((n, n), dtype=np.float64)
    used = False
    for col in (sites, sex):
        if col is None:
            continue
        used = True
        codes, missing = _codes(col)
        same = codes[:, None] == codes[None, :]
        same &= ~missing[:, None] & ~missing[None, :]
        score += same
    if age is not None:
        used = True
        try:
            a = age.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"age: expected numbers (years), got {age.dtype}") from exc
        score += np.abs(a[:, None] - a[None, :]) < age_threshold  # NaN compares False
    return score if used else np.ones((n, n))


def _codes(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obj = col.astype(object)
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in obj])
    as_str = np.array([str(v) for v in obj])
    _, codes = np.unique(as_str, return_inverse=True)
    return codes, missing


def build_population_graph(features: np.ndarray, sites: np.ndarray | None = None, sex: np.ndarray | None = None,
                           age: np.ndarray | None = None, age_threshold: float = 2.0,
                           min_weight: float = 0.0) -> Data:
    """Build the population graph of Parisot et al.

    Parameters
    ----------
    features : ndarray
        ``[N, P]`` node features (already selected / scaled); they are the node attributes and
        define the similarity kernel.
    sites, sex, age : ndarray, optional
        ``[N]`` phenotypes (site and sex any hashable labels, age in years).
    age_threshold : float
        Age difference below which two subjects match.
    min_weight : float
        Edges with weight ``<= min_weight`` are dropped.

    Returns
    -------
    torch_geometric.data.Data
        ``x`` (float32 ``[N, P]``), undirected ``edge_index`` without self-loops and
        ``edge_weight`` = phenotype score * ``exp(-rho^2 / (2 sigma^2))``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features: expected a [subjects (>= 2), features] matrix, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("features: contain NaN or infinite values")
    n = x.shape[0]
    pheno = phenotype_scores(n, sites, sex, age, age_threshold)
    dist = squareform(pdist(x, metric="correlation"))
    dist = np.nan_to_num(dist, nan=1.0)  # a constant feature row has no defined correlation
    sigma = dist[np.triu_indices(n, 1)].mean()
    similarity = np.exp(-(dist ** 2) / (2 * sigma ** 2)) if sigma > 0 else np.ones_like(dist)
    weights = pheno * similarity
    np.fill_diagonal(weights, 0.0)
    src, dst = np.nonzero(weights > min_weight)
    return Data(x=torch.as_tensor(x, dtype=torch.float32),
                edge_index=torch.as_tensor(np.stack([src, dst]), dtype=torch.long),
                edge_weight=torch.as_tensor(weights[src, dst], dtype=torch.float32),
                num_nodes=n)


def select_features(features: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, n_selected: int = 2000,
                    step: int | float = 100, alpha: float = 1.0) -> np.ndarray:
    """Standardise on the training nodes, then keep ``n_selected`` features by RFE with a ridge classifier.

    Returns
    -------
    ndarray
        ``[N, min(n_selected, P)]`` features of all subjects; only training rows were fitted on.
    """
    x = StandardScaler().fit(features[train_idx]).transform(features)
    if n_selected >= x.shape[1]:
        return x
    rfe = RFE(RidgeClassifier(alpha=alpha), n_features_to_select=n_selected, step=step)
    rfe.fit(x[train_idx].astype(np.float32), labels[train_idx])  # float32 halves the ridge fits' cost
    return x[:, rfe.support_]


def laplacian_lambda_max(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int) -> float:
    """Largest eigenvalue of the symmetric normalised Laplacian, as Parisot et al. scale their Chebyshev filters.

    Deterministic (unlike ARPACK's random start of ``torch_geometric.transforms.LaplacianLambdaMax``):
    a dense float64 ``eigvalsh`` up to 4000 nodes, ``eigsh`` from a fixed start vector above.
    """
    index, weight = get_laplacian(edge_index, edge_weight, normalization="sym", num_nodes=num_nodes)
    lap = to_scipy_sparse_matrix(index, weight.double(), num_nodes)
    if num_nodes <= 4000:
        return float(np.linalg.eigvalsh(lap.toarray())[-1])
    return float(eigsh(lap, k=1, which="LA", v0=np.ones(num_nodes), return_eigenvectors=False)[0])


def scaled_laplacian(edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int,
                     lambda_max: float | torch.Tensor | None = None) -> torch.Tensor:
    """The Chebyshev operator ``2 L / lambda_max - I`` (``L`` the symmetric normalised Laplacian), sparse.

    The entries come from :class:`torch_geometric.nn.ChebConv`'s own normalisation, so that
    :func:`chebyshev_basis` reproduces its propagation exactly.
    """
    with torch.random.fork_rng(devices=[]):  # the throw-away layer's initialisation must not move the global RNG
        conv = ChebConv(1, 1, K=1, normalization="sym")
    index, weight = conv.__norm__(edge_index, num_nodes, edge_weight, "sym", lambda_max, dtype=torch.float32)
    return torch.sparse_coo_tensor(index, weight, (num_nodes, num_nodes), check_invariants=True).coalesce()


def chebyshev_basis(x: torch.Tensor, operator: torch.Tensor, degree: int) -> torch.Tensor:
    """``[T_0(L~) x, ..., T_degree(L~) x]`` concatenated along features: ``[N, (degree + 1) * F]``.

    With this basis precomputed once (the node features of a transductive graph do not change),
    a Chebyshev graph convolution of ``x`` is a linear layer on it, which avoids materialising
    ``[edges, F]`` messages for the wide input features.
    """
    terms = [x]
    if degree >= 1:
        terms.append(torch.sparse.mm(operator, x))
    for _ in range(2, degree + 1):
        terms.append(2.0 * torch.sparse.mm(operator, terms[-1]) - terms[-2])
    return torch.cat(terms, dim=1)


class PopulationGCN(nn.Module):
    """Two Chebyshev graph convolutions of polynomial degree ``degree`` (ReLU, dropout), two logits.

    The first convolution acts on the precomputed :func:`chebyshev_basis` of the node features
    (a linear layer over ``(degree + 1) * F`` inputs, the same function as ``ChebConv(F, hidden,
    K=degree + 1)``); the second is a :class:`torch_geometric.nn.ChebConv`. The first dropout
    therefore acts on the propagated basis rather than on the raw features (the only departure
    from the reference layer), and weight decay covers both layers (Parisot's code: the first only).
    """

    def __init__(self, in_features: int, hidden: int = 16, degree: int = 3, dropout: float = 0.3) -> None:
        super().__init__()
        self.conv1 = nn.Linear((degree + 1) * in_features, hidden)
        self.conv2 = ChebConv(hidden, 2, K=degree + 1, normalization="sym")
        self.dropout = dropout

    def forward(self, basis: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor,
                lambda_max: torch.Tensor | None = None) -> torch.Tensor:
        """Node logits ``[N, 2]`` from the Chebyshev basis ``[N, (degree + 1) * F]``."""
        h = F.dropout(basis, self.dropout, self.training)
        h = F.relu(self.conv1(h))
        h = F.dropout(h, self.dropout, self.training)
        return self.conv2(h, edge_index, edge_weight, lambda_max=lambda_max)


def fit_predict_population_gcn(features: np.ndarray, labels: np.ndarray, sites: np.ndarray | None,
                               sex: np.ndarray | None, age: np.ndarray | None, train_idx: np.ndarray,
                               val_idx: np.ndarray | None, test_idx: np.ndarray, seed: int = 0,
                               epochs: int = 150, config: PopulationGCNConfig | None = None,
                               return_all: bool = False, return_info: bool = False
                               ) -> np.ndarray | tuple[np.ndarray, dict]:
    """Select features, build the population graph and train the GCN transductively.

    Parameters
    ----------
    features : ndarray
        ``[N, P]`` imaging features of all subjects (e.g. vectorised connectivity).
    labels : ndarray
        ``[N]`` binary labels in {0, 1}; labels outside ``train_idx`` / ``val_idx`` are never read
        (pass any 0/1 placeholder for them).
    sites, sex, age : ndarray or None
        ``[N]`` phenotypes for the edge weights.
    train_idx, val_idx, test_idx : ndarray
        Disjoint node indices; without validation nodes the last epoch is kept.
    seed : int
        Seeds weight initialisation and dropout (the global RNG state is restored afterwards).
    epochs : int
        Maximum training epochs (full-graph steps).
    config : PopulationGCNConfig, optional
        Other settings.
    return_all : bool
        Return the probabilities of all ``N`` nodes instead of the test nodes only.
    return_info : bool
        Also return ``{"best_epoch", "best_val_loss", "epochs_run", "n_features", "n_edges"}``.

    Returns
    -------
    ndarray or (ndarray, dict)
        Probabilities of class 1 for the test nodes (or all nodes).
    """
    cfg = config or PopulationGCNConfig()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features: expected a [subjects, features] matrix, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise ValueError("features: contain NaN or infinite values")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    n = x.shape[0]
    y = check_binary_labels(labels, n)
    split = check_splits(n, train_idx=train_idx, val_idx=val_idx, test_idx=test_idx)
    tr, va, te = split["train_idx"], split["val_idx"], split["test_idx"]
    if len(np.unique(y[tr])) < 2:
        raise ValueError("train_idx: the training subjects must contain both classes")

    # rows scaled to unit norm, as Parisot et al. row-normalise the features: with thousands of standardised
    # inputs, Adam's first steps would otherwise saturate the logits (the correlation kernel is scale-free)
    selected = normalize(select_features(x, y, tr, cfg.n_selected, cfg.rfe_step, cfg.ridge_alpha))
    graph = build_population_graph(selected, sites if cfg.use_site else None, sex if cfg.use_sex else None,
                                   age if cfg.use_age else None, cfg.age_threshold)
    lambda_max = torch.tensor(laplacian_lambda_max(graph.edge_index, graph.edge_weight, n), dtype=torch.float32)
    operator = scaled_laplacian(graph.edge_index, graph.edge_weight, n, lambda_max)
    basis = chebyshev_basis(graph.x, operator, cfg.cheb_degree)
    inputs = (basis, graph.edge_index, graph.edge_weight, lambda_max)
    target = torch.as_tensor(y)
    tr_t, va_t = torch.as_tensor(tr), torch.as_tensor(va)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PopulationGCN(graph.num_features, cfg.hidden, cfg.cheb_degree, cfg.dropout)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best_state, best_loss, best_epoch, waited, epoch = None, float("inf"), epochs - 1, 0, -1
        for epoch in range(epochs):
            model.train()
            logits = model(*inputs)
            loss = F.cross_entropy(logits[tr_t], target[tr_t])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if va.size:
                model.eval()
                with torch.no_grad():
                    val_loss = F.cross_entropy(model(*inputs)[va_t],
                                               target[va_t]).item()
                if val_loss < best_loss - 1e-6:
                    best_loss, best_epoch, waited = val_loss, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    waited += 1
                    if cfg.patience and waited >= cfg.patience:
                        break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            prob = torch.softmax(model(*inputs), dim=-1)[:, 1].numpy()
    prob = prob.astype(np.float64)
    out = prob if return_all else prob[te]
    if return_info:
        return out, {"best_epoch": best_epoch, "best_val_loss": best_loss if va.size else None,
                     "epochs_run": epoch + 1, "n_features": graph.num_features, "n_edges": graph.num_edges}
    return out
