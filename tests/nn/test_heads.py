"""The profile decoder moves to a new gene panel keeping what it learned of the genes both panels hold."""

import pytest
import torch

from scmamba2.nn.heads import ProfileHead


@pytest.mark.parametrize("n_hidden,nb", [(0, False), (8, True)])
def test_copy_genes_from_another_panel(n_hidden, nb):
    torch.manual_seed(0)
    old = ProfileHead(6, 4, n_hidden=n_hidden, nb=nb)
    old.set_panel(torch.tensor([10, 11, 12, 13]), torch.zeros(4), torch.ones(4))
    with torch.no_grad():
        for p in old.parameters():
            p.normal_()
    new = ProfileHead(6, 3, n_hidden=n_hidden, nb=nb)
    new.set_panel(torch.tensor([13, 20, 11]), torch.zeros(3), torch.ones(3))
    fresh_row = (new.decoder if n_hidden == 0 else new.decoder[-1]).weight[1].clone()
    assert new.copy_genes_from(old) == 2

    x = torch.randn(5, 6)
    y_old, y_new = old(x), new(x)
    # genes 13 and 11 decode exactly as before; gene 20 keeps its fresh weights and a zero bias
    assert torch.allclose(y_new[:, 0], y_old[:, 3]) and torch.allclose(y_new[:, 2], y_old[:, 1])
    out = new.decoder if n_hidden == 0 else new.decoder[-1]
    assert torch.equal(out.weight[1], fresh_row) and out.bias[1] == 0
    if nb:
        assert new.log_theta[0] == old.log_theta[3] and new.log_theta[2] == old.log_theta[1]
