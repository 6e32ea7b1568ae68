"""Mixup of multimodal batches (pmrl_sci.engine.mixup)."""

import pytest
import torch

from pmrl_sci.engine.mixup import mix_batch, mixed_cross_entropy


def _batch():
    g = torch.Generator().manual_seed(0)
    inputs = {"fmri": torch.randn(6, 4, 4, generator=g), "smri": torch.randn(6, 3, generator=g)}
    mask = {"fmri": torch.tensor([True] * 6), "smri": torch.tensor([True, False, True, True, True, True])}
    return inputs, mask


def test_every_modality_is_mixed_with_the_same_partner_and_weight():
    inputs, mask = _batch()
    torch.manual_seed(3)
    mixed = mix_batch(inputs, mask, alpha=0.4)
    assert 0.0 <= mixed.lam <= 1.0 and sorted(mixed.partner.tolist()) == list(range(6))
    for name, x in inputs.items():
        expected = mixed.lam * x + (1 - mixed.lam) * x[mixed.partner]
        torch.testing.assert_close(mixed.inputs[name], expected)
    # a modality is present only where both partners have it
    assert torch.equal(mixed.mask["smri"], mask["smri"] & mask["smri"][mixed.partner])
    assert torch.equal(mixed.mask["fmri"], mask["fmri"])
    torch.manual_seed(3)  # the draws come from the global generator: the same seed, the same mix
    again = mix_batch(inputs, mask, alpha=0.4)
    assert again.lam == mixed.lam and torch.equal(again.partner, mixed.partner)


def test_the_loss_weights_both_labels():
    inputs, mask = _batch()
    torch.manual_seed(1)
    mixed = mix_batch(inputs, mask, alpha=1.0)
    logits = torch.randn(6, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    loss = mixed_cross_entropy(logits, labels, mixed)
    ce = torch.nn.functional.cross_entropy
    expected = (mixed.lam * ce(logits, labels, reduction="none")
                + (1 - mixed.lam) * ce(logits, labels[mixed.partner], reduction="none"))
    torch.testing.assert_close(loss, expected)
    loss.mean().backward()
    assert torch.isfinite(logits.grad).all()
    mixed.lam = 1.0  # no mixing: the plain cross-entropy
    torch.testing.assert_close(mixed_cross_entropy(logits, labels, mixed), ce(logits, labels, reduction="none"))


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match="alpha must be > 0"):
        mix_batch(*_batch(), alpha=alpha)
