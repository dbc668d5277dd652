"""The contrastive term: a view keeps <cls> and a random half of each cell's genes, in order, right-padded;
InfoNCE prefers matching views (training with it: tests/train/test_pretrain.py)."""

import torch

from scmamba2._keys import GENES, MASK, PADDING_MASK, TARGET_VALUES, VALUES
from scmamba2.train.losses import info_nce
from scmamba2.train.plan import half_view


def test_half_view_keeps_cls_and_an_ordered_half_of_the_genes():
    torch.manual_seed(0)
    lengths = [40, 7, 2, 25]
    L = max(lengths)
    genes = torch.zeros(4, L, dtype=torch.long)
    values = torch.zeros(4, L)
    pad = torch.ones(4, L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        genes[i, :n] = torch.arange(100, 100 + n) * (i + 1)
        genes[i, 0] = 1  # <cls>
        values[i, :n] = torch.rand(n)
        pad[i, :n] = False
    mask = ~pad & (torch.rand(4, L) < 0.4)
    mask[:, 0] = False
    batch = {GENES: genes, VALUES: torch.where(mask, torch.full_like(values, -1.0), values),
             TARGET_VALUES: values, MASK: mask, PADDING_MASK: pad}
    view = half_view(batch)
    for i, n in enumerate(lengths):
        k = int((~view[PADDING_MASK][i]).sum())
        assert not view[PADDING_MASK][i, :k].any() and view[PADDING_MASK][i, k:].all()  # right-padded
        g = view[GENES][i, :k]
        assert g[0] == 1 and 2 <= k <= n  # <cls> and at least one gene
        assert torch.all(g[1:].diff() > 0)  # the cell's order
        src = {int(x): j for j, x in enumerate(genes[i, :n])}
        j = torch.tensor([src[int(x)] for x in g])
        torch.testing.assert_close(view[VALUES][i, :k], values[i, j])  # true values, not the masked input
    assert abs(int((~view[PADDING_MASK][0]).sum()) - 21) <= 8  # about half of the 39 genes


def test_info_nce_prefers_matching_views():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    assert info_nce(a, a + 0.01 * torch.randn(16, 8)) < info_nce(a, torch.randn(16, 8))
