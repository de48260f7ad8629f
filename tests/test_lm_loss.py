"""The language-model loss: the mean cross-entropy over the labels that are not ignored, without a host sync."""

import torch
import torch.nn.functional as F

from titans.models.lm import IGNORE_INDEX, language_model_loss


def test_loss_is_the_mean_over_labels_that_are_not_ignored():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :3] = IGNORE_INDEX
    kept = labels != IGNORE_INDEX
    expected = F.cross_entropy(logits[kept], labels[kept])
    torch.testing.assert_close(language_model_loss(logits, labels), expected, rtol=1e-12, atol=0)


def test_loss_with_every_label_ignored_is_zero_and_attached():
    logits = torch.randn(1, 4, 3, requires_grad=True)
    loss = language_model_loss(logits, torch.full((1, 4), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and not logits.grad.any()
