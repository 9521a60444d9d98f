"""C.8's reference against TRL: ``distillation_loss`` equals GKDTrainer's
``generalized_jsd_loss`` and the stable DistillationTrainer's divergence on the same logits,
mask and settings."""

from __future__ import annotations

import warnings

import pytest
import torch

from ftlab.distill import distillation_loss

BETAS = [0.0, 0.5, 1.0, 0.3]
TEMPERATURES = [1.0, 2.0]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student, teacher = 3 * torch.randn(3, 7, 19, generator=g), 3 * torch.randn(3, 7, 19, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0, 0]])
    return student, teacher, mask


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_equals_trl_generalized_jsd_loss(beta, temperature):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer
    student, teacher, mask = _batch()
    labels = torch.where(mask.bool(), 5, -100)
    theirs = GKDTrainer.generalized_jsd_loss(student, teacher, labels=labels, beta=beta,
                                             temperature=temperature)
    ours = distillation_loss(student, teacher, mask, beta=beta, temperature=temperature)
    assert abs(float(ours) - float(theirs)) <= 1e-6 * max(1.0, abs(float(theirs))), (float(ours), float(theirs))


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("beta", BETAS)
def test_equals_the_distillation_trainers_divergence(beta, temperature):
    """TRL's DistillationTrainer projects hidden states through each model's head in tiles;
    our loss on the logits those heads give is the same number, and the same gradient."""
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    g = torch.Generator().manual_seed(1)
    hidden_s, hidden_t = torch.randn(3, 7, 8, generator=g), torch.randn(3, 7, 12, generator=g)
    head_s = torch.randn(19, 8, generator=g).requires_grad_()
    head_t = torch.randn(19, 12, generator=g)
    mask = _batch()[2]
    theirs, _, _ = _chunked_divergence_loss(hidden_s, hidden_t, head_s, head_t, mask, beta,
                                            temperature=temperature)
    theirs.backward()
    their_grad = head_s.grad.clone()
    head_s.grad = None
    ours = distillation_loss(hidden_s @ head_s.T, hidden_t @ head_t.T, mask, beta=beta,
                             temperature=temperature)
    ours.backward()
    assert abs(ours.item() - theirs.item()) <= 1e-6 * max(1.0, abs(theirs.item())), (ours.item(), theirs.item())
    torch.testing.assert_close(head_s.grad, their_grad, atol=1e-6, rtol=1e-5)
