"""cnf.evaluate: p-values, MAP inpainting, interpolation, exact evaluation and the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from cnf import evaluate as ev
from cnf.cli import run
from cnf.dequantization import DequantizedDensity
from cnf.distributions import Density, StandardNormal
from cnf.flows.base import Flow
from cnf.flows.coupling import RealNVP, RealNVPImage


class LowerTriangular(Flow):
    """Test-only Gaussian flow: x = L z, so x ~ N(0, L Lᵀ)."""

    def __init__(self, L):
        super().__init__()
        self.L = torch.nn.Parameter(L)

    def forward(self, x, context=None):
        z = torch.linalg.solve_triangular(self.L, x.T, upper=False).T
        return z, -torch.log(torch.diagonal(self.L).abs()).sum().expand(x.shape[0])

    def inverse(self, z, context=None):
        return z @ self.L.T, torch.log(torch.diagonal(self.L).abs()).sum().expand(z.shape[0])


class NoisyLogdet(Flow):
    """Test-only: identity map whose log-det is 0 exactly, or 0 + N(0, 1) noise when estimated."""

    stochastic = True

    def __init__(self):
        super().__init__()
        self.exact = False

    def forward(self, x, context=None):
        noise = torch.zeros(x.shape[0]) if self.exact else torch.randn(x.shape[0])
        return x, noise.to(x)

    def inverse(self, z, context=None):
        return z, z.new_zeros(z.shape[0])


def _gaussian():
    L = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [-0.5, 0.3, 0.7]], dtype=torch.float64)
    return Density(LowerTriangular(L), StandardNormal(3)).double(), L @ L.T


def test_p_values_hand_computed():
    ref = torch.tensor([1.0, 2.0, 3.0, 4.0])
    p = ev.p_values(torch.tensor([0.5, 2.0, 10.0]), ref)
    torch.testing.assert_close(p, torch.tensor([1 / 5, 3 / 5, 5 / 5], dtype=torch.float64))


def test_anomaly_scores_separate_far_points():
    from sklearn.metrics import roc_auc_score

    density, _ = _gaussian()
    torch.manual_seed(0)
    ref = density.sample(500)
    inliers, outliers = density.sample(200), density.sample(200) + 6.0
    a, b = (ev.anomaly_scores(density, x, ref) for x in (inliers, outliers))
    labels = torch.cat([torch.zeros(200), torch.ones(200)])
    auroc = roc_auc_score(labels, -torch.cat([a["log_prob"], b["log_prob"]]))
    assert auroc > 0.99
    assert float(b["p_value"].max()) < 0.01
    # in-distribution p-values are ~uniform: about 5 % below 0.05 (measured 0.075 here, 200 points)
    assert 0.01 < float((a["p_value"] < 0.05).double().mean()) < 0.12


def test_inpainting_recovers_gaussian_conditional_mean():
    density, cov = _gaussian()
    x = torch.tensor([[1.2, 0.0, -0.7]], dtype=torch.float64)
    mask = torch.tensor([[False, True, False]])
    filled = ev.inpaint(density, x, mask, steps=1500, lr=0.05)
    o, m = [0, 2], [1]
    expected = cov[m][:, o] @ torch.linalg.solve(cov[o][:, o], x[0, o])
    assert filled[0, 1].item() == pytest.approx(expected.item(), abs=1e-3)
    assert filled[0, 0].item() == 1.2 and filled[0, 2].item() == -0.7
    assert all(p.requires_grad for p in density.parameters())


def test_image_inpainting_keeps_observed_pixels_and_returns_levels():
    torch.manual_seed(0)
    d = DequantizedDensity(RealNVPImage((1, 4, 4), scales=2, hidden=8),
                           StandardNormal((1, 4, 4)), levels=17, logit_lambda=0.05)
    x = torch.randint(0, 17, (3, 1, 4, 4))
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., 2:, :] = True
    out = ev.inpaint(d, x, mask, steps=20)
    assert out.dtype == x.dtype and torch.equal(out[~mask], x[~mask])
    assert int(out.min()) >= 0 and int(out.max()) <= 16


def test_interpolation_ends_reproduce_inputs():
    torch.manual_seed(0)
    d = Density(RealNVP(4, num_layers=4, hidden=16), StandardNormal(4))
    for p in d.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x0, x1 = torch.randn(4), torch.randn(4)
    path = ev.interpolate(d, x0, x1, steps=5)
    assert path.shape == (5, 4)
    torch.testing.assert_close(path[0], x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(path[-1], x1, atol=1e-5, rtol=0)


def test_exact_evaluation_says_how():
    torch.manual_seed(0)
    d = Density(NoisyLogdet(), StandardNormal(3))
    x = torch.randn(400, 3)
    truth = float(-StandardNormal(3).log_prob(x).mean())
    res = ev.exact_evaluate(d, x, max_exact_dim=3)
    assert "exact log-determinant" in res.method and res.nll == pytest.approx(truth, abs=1e-6)
    res = ev.exact_evaluate(d, x, max_exact_dim=2, probes=50)
    assert "averaged over 50 probe draws" in res.method
    # probe noise N(0, 1) per draw: the mean over 50 draws x 400 examples is within ~0.01
    assert res.nll == pytest.approx(truth, abs=0.03)
    assert res.probe_stderr == pytest.approx(math.sqrt(1 / 50 / 400), rel=0.2)
    res = ev.exact_evaluate(Density(RealNVP(3), StandardNormal(3)), x)
    assert res.method.startswith("exact (closed-form")


def test_corruptions():
    x = torch.zeros(50, 1, 8, 8, dtype=torch.uint8)
    noisy = ev.corrupt(x, 17, "noise", 0.5)
    frac = float((noisy != 0).double().mean())
    assert abs(frac - 0.5 * 16 / 17) < 0.05
    patched = ev.corrupt(x, 17, "patch", 0.25)
    assert torch.equal((patched == 16).flatten(1).sum(1), torch.full((50,), 16))
    ramp = torch.arange(8, dtype=torch.uint8).view(1, 1, 8, 1).expand(5, 1, 8, 8).clone()
    shuffled = ev.corrupt(ramp, 17, "shuffle")
    assert torch.equal(shuffled.sort(dim=2)[0], ramp) and not torch.equal(shuffled, ramp)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "experiment" / "digits_realnvp.yaml")
    run(["fit", "--config", config, "--run.root", str(root), "--run.name", "t",
         "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
         "--model.init_args.density.init_args.flow.init_args.hidden", "8",
         "--run.wandb", "disabled"])
    return root / "digits_realnvp" / "t"


def test_cli_commands_on_a_run(tiny_run):
    res = ev.main(["exact", str(tiny_run)])
    summary = json.loads((tiny_run / "summary.json").read_text())["metrics"]
    assert res["method"].startswith("exact (closed-form") and res["dim"] == 64
    # same model, same test set, a fresh draw of the dequantization noise: close to test/nll
    assert res["nll"] == pytest.approx(summary["test/nll"], rel=0.02)
    assert res["bpd"] == pytest.approx(res["nll"] / (64 * math.log(2)))
    res = ev.main(["anomaly", str(tiny_run), "--corruption", "noise"])
    assert 0 <= res["results"][0]["auroc"] <= 1 and Path(res["image"]).exists()
    for cmd in (["sample", "--n", "4"], ["interpolate", "--pairs", "2", "--steps", "4"],
                ["inpaint", "--n", "2", "--steps", "5"]):
        res = ev.main([cmd[0], str(tiny_run)] + cmd[1:])
        assert Path(res["image"]).stat().st_size > 500
    assert (tiny_run / "eval" / "inpaint.json").exists()
