"""Connectivity encoders: BrainNetTF (with OCRead), VanillaTF, BrainNetCNN, the edge MLP."""

from __future__ import annotations

import pytest
import torch

from pmrl_sci.encoders.brainnetcnn import BrainNetCNN
from pmrl_sci.encoders.brainnettf import BrainNetTF, OCRead, connection_profiles, orthonormal_centers
from pmrl_sci.encoders.vanillatf import VanillaTF
from pmrl_sci.registry import build_encoder

torch.set_num_threads(1)

R = 16
NAMES = ["brainnettf", "vanillatf", "brainnetcnn", "edge_mlp"]


def _kwargs(name: str, channels: int) -> dict:
    kwargs = {"n_rois": R, "channels": channels, "embed_dim": 12}
    if name == "brainnettf":
        kwargs["n_clusters"] = 8
    if name in ("brainnettf", "vanillatf"):
        kwargs["dim_feedforward"] = 32
    return kwargs


def _connectivity(batch: int, channels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, channels, R, R, generator=g)
    x = torch.tanh((a + a.transpose(-1, -2)) / 2)
    x = x * (1 - torch.eye(R))
    return x[:, 0] if channels == 1 else x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_and_gradients(name: str, channels: int) -> None:
    torch.manual_seed(0)
    enc = build_encoder(name, **_kwargs(name, channels))
    x = _connectivity(5, channels).requires_grad_(True)
    enc.check_input(x, "fmri")
    z = enc(x)
    assert z.shape == (5, 12) and torch.isfinite(z).all()
    z.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    trainable = [p for p in enc.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert sum(p.grad.abs().sum() for p in trainable) > 0


@pytest.mark.parametrize("name", NAMES)
def test_input_spec_rejects_wrong_shapes(name: str) -> None:
    enc = build_encoder(name, **_kwargs(name, 2))
    with pytest.raises(ValueError, match=r"\[batch, 2, 16, 16\]"):
        enc.check_input(torch.zeros(3, R, R), "fmri")
    with pytest.raises(ValueError, match="expected shape"):
        enc(torch.zeros(3, 3, R, R))
    one = build_encoder(name, **_kwargs(name, 1))
    one.check_input(torch.zeros(3, R, R), "fmri")
    assert one(torch.zeros(3, 1, R, R)).shape == (3, 12)  # an explicit single channel is accepted too


def test_connection_profiles_concatenate_rows() -> None:
    x = _connectivity(2, 2)
    h = connection_profiles(x, R, 2)
    assert h.shape == (2, R, 2 * R)
    assert torch.equal(h[1, 3, :R], x[1, 0, 3]) and torch.equal(h[1, 3, R:], x[1, 1, 3])


def test_orthonormal_centers() -> None:
    c = orthonormal_centers(10, 32, torch.Generator().manual_seed(1))
    assert c.dtype == torch.float32 and c.shape == (10, 32)
    torch.testing.assert_close(c @ c.T, torch.eye(10), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="n_clusters <= 16"):
        orthonormal_centers(20, 16)


def test_ocread_centres_stay_frozen_and_orthonormal_through_training() -> None:
    torch.manual_seed(0)
    enc = BrainNetTF(n_rois=R, channels=2, embed_dim=8, n_clusters=8, dim_feedforward=32)
    centers0 = enc.readout.centers.clone()
    assert "readout.centers" in enc.state_dict()
    assert all(p is not enc.readout.centers for p in enc.parameters())
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    x = _connectivity(6, 2)
    for _ in range(3):
        loss = enc(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(enc.readout.centers, centers0)
    torch.testing.assert_close(centers0 @ centers0.T, torch.eye(8), atol=1e-5, rtol=0)
    learnable = BrainNetTF(n_rois=R, embed_dim=8, n_clusters=8, dim_feedforward=32, freeze_centers=False)
    assert any(p is learnable.readout.centers for p in learnable.parameters())


def test_assignment_is_returned_and_is_a_distribution() -> None:
    torch.manual_seed(0)
    enc = BrainNetTF(n_rois=R, embed_dim=8, n_clusters=8, dim_feedforward=32).eval()
    x = _connectivity(4, 1)
    z, assignment = enc(x, return_assignment=True)
    assert z.shape == (4, 8) and assignment.shape == (4, R, 8)
    torch.testing.assert_close(assignment.sum(-1), torch.ones(4, R))
    torch.testing.assert_close(enc(x), z)


def test_ocread_pools_with_the_assignment() -> None:
    torch.manual_seed(0)
    read = OCRead(n_nodes=R, feature_dim=R, n_clusters=4)
    h = torch.randn(3, R, R)
    clusters, assignment = read(h)
    encoded = read.encoder(h.reshape(3, -1)).reshape(3, R, R)
    torch.testing.assert_close(clusters, torch.einsum("brk,brf->bkf", assignment, encoded))
    scores = (encoded @ read.centers.T) ** 2
    torch.testing.assert_close(assignment, torch.softmax(scores, -1))


def test_transformer_heads_must_divide_features() -> None:
    with pytest.raises(ValueError, match="not divisible by n_heads=4"):
        VanillaTF(n_rois=10, channels=1)


def test_brainnetcnn_edge_to_edge_is_cross_shaped() -> None:
    torch.manual_seed(0)
    enc = BrainNetCNN(n_rois=R, embed_dim=4).eval()
    e2e = enc.e2e[0]
    x = torch.zeros(1, 1, R, R, requires_grad=True)
    e2e(x)[0, 0, 2, 5].backward()
    touched = x.grad[0, 0] != 0
    cross = torch.zeros(R, R, dtype=torch.bool)
    cross[2, :] = True
    cross[:, 5] = True
    assert torch.equal(touched, cross)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name: str) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        enc = build_encoder(name, **_kwargs(name, 2)).eval()
        outs.append(enc(_connectivity(3, 2)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_learns_an_easy_signal(name: str) -> None:
    """A linear probe on the embedding separates two connectivity patterns after a few steps."""
    torch.manual_seed(0)
    n = 32
    y = torch.arange(n) % 2
    x = _connectivity(n, 1, seed=3) * 0.3
    block = torch.zeros(R, R)
    block[:4, :4] = 1.0
    x = x + y[:, None, None] * block * (1 - torch.eye(R))
    enc = build_encoder(name, **_kwargs(name, 1))
    probe = torch.nn.Linear(12, 2)
    opt = torch.optim.Adam([*enc.parameters(), *probe.parameters()], lr=3e-3)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(probe(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        acc = (probe(enc(x)).argmax(1) == y).float().mean().item()
    assert acc >= 0.9, acc


def test_edge_mlp_reads_only_the_upper_triangle_edges():
    encoder = build_encoder("edge_mlp", n_rois=R, channels=2, embed_dim=12).eval()
    x = _connectivity(3, 2)
    changed = x.clone()
    lower = torch.tril_indices(R, R)  # diagonal and lower triangle: not edges of the upper triangle
    changed[:, :, lower[0], lower[1]] = 5.0
    assert torch.equal(encoder(x), encoder(changed))
    changed[:, 1, 0, R - 1] += 1.0  # one upper-triangle edge of the second channel
    assert not torch.allclose(encoder(x), encoder(changed))
    assert encoder.net[1].in_features == 2 * R * (R - 1) // 2
