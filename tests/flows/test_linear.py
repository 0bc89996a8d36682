import pytest
import torch

from cnf.errors import ConfigError, ShapeError
from cnf.flows.linear import LULinear, Permutation, RandomPermutation, Reverse


def test_lu_linear_logdet_equals_slogdet_of_its_weight():
    torch.manual_seed(0)
    flow = LULinear(6).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
    w = flow.weight()
    _, expected = torch.linalg.slogdet(w)
    _, logdet = flow(torch.randn(3, 6, dtype=torch.float64))
    torch.testing.assert_close(logdet, expected.expand(3))
    torch.testing.assert_close(flow.inverse_weight() @ w, torch.eye(6, dtype=torch.float64))


def test_lu_linear_starts_as_a_rotation():
    w = LULinear(5).weight()
    torch.testing.assert_close(w @ w.t(), torch.eye(5), atol=1e-5, rtol=0)


def test_permutations():
    x = torch.arange(4.0)[None]
    assert Reverse(4)(x)[0].tolist() == [[3.0, 2.0, 1.0, 0.0]]
    p = RandomPermutation(7, seed=1)
    assert torch.equal(p.perm, RandomPermutation(7, seed=1).perm)
    assert not torch.equal(p.perm, torch.arange(7))
    with pytest.raises(ConfigError, match="not a permutation"):
        Permutation([0, 0, 1])
    with pytest.raises(ShapeError, match="4 entries"):
        Reverse(4)(torch.randn(2, 3))
