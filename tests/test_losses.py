"""Each loss against its definition (closed forms, hand computations, the lpips package itself),
the weight-0 switches of WeightedLossTerms, and the optimiser factories (Ranger vs an independent
implementation of pSp's update rule; Hydra partials)."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from losses import (
    GOAE_LOSS_WEIGHTS,
    LossInputs,
    LPIPSLoss,
    LPIPSWeightsError,
    WeightedLossTerms,
    d_logistic_loss,
    d_r1_loss,
    delta_w_regularization,
    delta_w_stacked_norm,
    encoder_latent_adversarial_loss,
    g_nonsaturating_loss,
    lazy_r1_regularization,
    pixel_l2_loss,
)
from losses.composite import BackgroundDepthTerm
from losses.identity import IdentityLoss
from losses.regularizers import latent_offsets
from tolerances import assert_close_roundoff, roundoff_bound


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --------------------------------------------------------------------------- adversarial (eq. 2, 3)


@pytest.mark.numerics
def test_d_logistic_loss_is_the_non_saturating_loss_with_sigmoid_probabilities() -> None:
    real, fake = [0.5, -1.0, 2.0], [2.0, 0.0]
    expected = -sum(math.log(_sigmoid(r)) for r in real) / 3 - sum(math.log(1 - _sigmoid(f)) for f in fake) / 2
    assert d_logistic_loss(torch.tensor(real), torch.tensor(fake)).item() == pytest.approx(expected, rel=1e-6)


def test_g_nonsaturating_loss_is_minus_log_d_of_fakes() -> None:
    fake = [2.0, -0.5, 0.0, 3.0]
    expected = -sum(math.log(_sigmoid(f)) for f in fake) / 4
    assert g_nonsaturating_loss(torch.tensor(fake)).item() == pytest.approx(expected, rel=1e-6)


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm() -> None:
    a = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    real_w = torch.randn(4, 3, requires_grad=True)
    penalty = d_r1_loss(real_w @ a + 0.3, real_w)
    assert penalty.item() == pytest.approx(a.detach().pow(2).sum().item(), rel=1e-6)
    # create_graph: the penalty back-propagates into D's parameters, d||a||^2/da = 2a.
    penalty.backward()
    assert torch.allclose(a.grad, 2 * a.detach())


@pytest.mark.numerics
def test_r1_of_a_quadratic_discriminator_averages_per_sample_squared_gradients() -> None:
    matrix = torch.tensor([[2.0, 0.5], [0.5, -1.0]])  # symmetric: grad of w^T A w / 2 is A w
    real_w = torch.tensor([[1.0, 0.0], [1.0, 2.0], [-3.0, 1.0]], requires_grad=True)
    real_pred = 0.5 * ((real_w @ matrix) * real_w).sum(dim=1)
    expected = (real_w.detach() @ matrix).pow(2).sum(dim=1).mean()
    assert d_r1_loss(real_pred, real_w).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.numerics
def test_lazy_r1_uses_e4e_scaling_and_reaches_every_discriminator_parameter() -> None:
    torch.manual_seed(0)
    discriminator = nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1))
    real_w = torch.randn(5, 8, requires_grad=True)
    real_pred = discriminator(real_w)
    r1 = lazy_r1_regularization(real_pred, real_w, gamma=10.0, d_reg_every=16)
    assert r1.penalty.item() == pytest.approx(d_r1_loss(discriminator(real_w), real_w).item(), rel=1e-6)
    assert r1.objective.item() == pytest.approx(10.0 / 2 * r1.penalty.item() * 16, rel=1e-6)
    r1.objective.backward()
    # The last bias does not influence grad_w D, but must still get a (zero) gradient for DDP.
    assert all(p.grad is not None for p in discriminator.parameters())
    assert torch.count_nonzero(discriminator[2].bias.grad) == 0


def test_encoder_adversarial_loss_averages_e4e_per_row_losses_over_judged_rows() -> None:
    torch.manual_seed(1)
    discriminator = nn.Sequential(nn.Linear(6, 6), nn.LeakyReLU(0.2), nn.Linear(6, 1))
    ws = torch.randn(3, 5, 6, requires_grad=True)
    rows = [0, 2, 3]
    per_row = [F.softplus(-discriminator(ws[:, i])).mean() for i in rows]  # e4e's loop
    expected = sum(per_row) / len(rows)
    loss = encoder_latent_adversarial_loss(discriminator, ws, rows)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    judged = ws.grad.abs().sum(dim=(0, 2))
    assert all(judged[i] > 0 for i in rows) and judged[1] == 0 and judged[4] == 0
    all_rows = encoder_latent_adversarial_loss(discriminator, ws, None)
    assert all_rows.item() == pytest.approx(g_nonsaturating_loss(discriminator(ws.reshape(-1, 6))).item())


# --------------------------------------------------------------------------- delta w+ regulariser


def _ws_with_known_offsets() -> torch.Tensor:
    # sample 0: w_1 - w_0 = (3, 4) -> 5, w_2 - w_0 = (0, 1) -> 1; sample 1: (0, 0) -> 0, (6, 8) -> 10
    w0 = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    offsets = torch.tensor([[[3.0, 4.0], [0.0, 1.0]], [[0.0, 0.0], [6.0, 8.0]]])
    return torch.cat([w0[:, None], w0[:, None] + offsets], dim=1)


def test_delta_w_regularization_is_e4e_row_sum_of_l2_norms_averaged_over_batch() -> None:
    ws = _ws_with_known_offsets()
    assert delta_w_regularization(ws).item() == pytest.approx(((5 + 1) + (0 + 10)) / 2)
    assert delta_w_regularization(ws, rows=[1]).item() == pytest.approx((5 + 0) / 2)
    assert delta_w_regularization(ws, rows=[0, 1, 2]).item() == pytest.approx(8.0)  # row 0 has no offset


def test_delta_w_stacked_norm_is_one_l2_norm_of_all_offsets() -> None:
    ws = _ws_with_known_offsets()
    assert delta_w_stacked_norm(ws).item() == pytest.approx((math.sqrt(25 + 1) + 10) / 2)
    assert latent_offsets(ws).shape == (2, 2, 2)


def test_delta_w_gradient_is_zero_not_nan_for_closed_rows() -> None:
    ws = torch.zeros(2, 14, 4)
    ws[:, 1] = 1.0
    ws.requires_grad_(True)
    for loss in (delta_w_regularization(ws), delta_w_stacked_norm(ws)):
        (grad,) = torch.autograd.grad(loss, ws)
        assert torch.isfinite(grad).all()
        assert torch.count_nonzero(grad[:, 2:]) == 0


# --------------------------------------------------------------------------- reconstruction


def test_pixel_l2_is_the_mean_squared_error() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert pixel_l2_loss(a, b).item() == pytest.approx(((a - b) ** 2).sum().item() / a.numel(), rel=1e-6)


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file in torchvision's alexnet-owt-7be5be79.pth format (random weights, features + classifier)."""
    import torchvision

    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def lpips_loss(alexnet_file: Path) -> LPIPSLoss:
    return LPIPSLoss(alexnet_file)


@pytest.mark.numerics
def test_lpips_wrapper_equals_the_lpips_package_with_the_same_backbone(
    lpips_loss: LPIPSLoss, alexnet_file: Path
) -> None:
    import lpips

    reference = lpips.LPIPS(pretrained=True, net="alex", pnet_rand=True, verbose=False).eval()
    state = torch.load(alexnet_file, weights_only=True)
    with torch.no_grad():
        for block in (reference.net.slice1, reference.net.slice2, reference.net.slice3, reference.net.slice4,
                      reference.net.slice5):
            for index, layer in block.named_children():
                if isinstance(layer, nn.Conv2d):
                    layer.weight.copy_(state[f"features.{index}.weight"])
                    layer.bias.copy_(state[f"features.{index}.bias"])
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    expected = reference(x, y)  # [N, 1, 1, 1], inputs in [-1, 1]
    # Rule 2 of tests/README.md: AlexNet's 5 convs (K up to 384 x 9) and the linear heads, ~15,000 roundings
    assert_close_roundoff(lpips_loss.per_sample(x, y), expected.flatten(), roundings=15_000)
    assert lpips_loss(x, y).item() == pytest.approx(expected.mean().item(), abs=roundoff_bound(expected, 15_000))
    assert lpips_loss(x, x).item() == pytest.approx(0.0, abs=1e-7)


def test_lpips_network_is_frozen_in_eval_and_kept_out_of_state_dict(lpips_loss: LPIPSLoss) -> None:
    holder = nn.Module()
    holder.loss = lpips_loss
    holder.train()
    assert not lpips_loss.network.training
    assert list(holder.parameters()) == [] and holder.state_dict() == {}
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)
    lpips_loss(x, torch.zeros_like(x)).backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    assert all(p.grad is None for p in lpips_loss.network.parameters())
    holder.double()  # .to()/.double() still reach the hidden network
    assert next(lpips_loss.network.parameters()).dtype == torch.float64
    holder.float()


def test_lpips_missing_or_wrong_backbone_file_names_the_file_and_its_origin(tmp_path: Path) -> None:
    with pytest.raises(LPIPSWeightsError, match=r"not found.*alexnet-owt-7be5be79\.pth.*download\.pytorch\.org"):
        LPIPSLoss(tmp_path / "alexnet.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, wrong)
    with pytest.raises(LPIPSWeightsError, match=r"wrong\.pth is not a torchvision AlexNet.*features\.3\.weight"):
        LPIPSLoss(wrong)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"features.0.weight": types.SimpleNamespace(a=1)}, unsafe)
    with pytest.raises(LPIPSWeightsError, match="never loaded with weights_only=False"):
        LPIPSLoss(unsafe)


# --------------------------------------------------------------------------- composite


def _inputs(batch: int = 2, size: int = 256) -> LossInputs:
    torch.manual_seed(3)
    ws = torch.randn(batch, 14, 8, requires_grad=True)
    return LossInputs(
        reconstruction=torch.rand(batch, 3, size, size) * 2 - 1,
        target=torch.rand(batch, 3, size, size) * 2 - 1,
        ws=ws,
        active_rows=range(0, 7),
        judged_rows=[0, 1, 2, 3],
        latent_discriminator=nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Linear(8, 1)),
    )


@pytest.mark.numerics
def test_weighted_loss_terms_sum_the_built_terms_with_their_weights(alexnet_file: Path) -> None:
    from losses.background import FrontViewRender, GeometricBackgroundMasker
    weights = {"l2": 1.0, "lpips": 0.8, "id": 0.0, "adv": 0.05, "bg": 5.0, "delta_w": 0.001}
    loss = WeightedLossTerms(
        weights,
        options={"lpips": {"backbone_weights": str(alexnet_file)}, "bg": {"depth_average": 2.5}},
    )
    assert loss.active_terms == ("l2", "lpips", "adv", "bg", "delta_w")
    inputs = _inputs(size=64)
    depth = torch.rand(2, 1, 8, 8) + 2
    inputs.front_render = FrontViewRender(depth=depth, image=torch.zeros(2, 3, 32, 32), weights_sum=torch.ones(2, 1, 8, 8))
    mask = GeometricBackgroundMasker()(inputs.front_render)
    assert 0 < mask.mean() < 1
    result = loss(inputs)
    expected = {
        "l2": pixel_l2_loss(inputs.reconstruction, inputs.target),
        "lpips": LPIPSLoss(alexnet_file)(inputs.reconstruction, inputs.target),
        "adv": encoder_latent_adversarial_loss(inputs.latent_discriminator, inputs.ws, [0, 1, 2, 3]),
        "bg": ((depth - 2.5) * mask).pow(2).mean(),  # form mse: F.mse_loss(D*M, D_avg*M)
        "delta_w": delta_w_regularization(inputs.ws, range(7)),
    }
    for name, value in expected.items():
        assert result.values[name].item() == pytest.approx(value.item(), rel=1e-5), name
    total = sum(weights[name] * value for name, value in expected.items())
    assert result.total.item() == pytest.approx(total.item(), rel=1e-5)
    assert result.weighted("bg").item() == pytest.approx(5.0 * expected["bg"].item(), rel=1e-5)
    logs = result.log_dict("train/")
    assert set(logs) == {"train/loss", "train/bg_fraction"} | {f"train/loss_{name}" for name in expected}
    assert logs["train/bg_fraction"].item() == pytest.approx(mask.mean().item())
    result.total.backward()
    assert inputs.ws.grad is not None and torch.count_nonzero(inputs.ws.grad[:, 1:7]) > 0


def test_weight_zero_terms_and_their_networks_are_never_built(tmp_path: Path) -> None:
    missing = str(tmp_path / "does_not_exist.pth")  # would raise if anything tried to load it
    loss = WeightedLossTerms(
        {"l2": 1.0, "lpips": 0.0, "id": 0.0, "adv": 0.0, "bg": 0.0, "delta_w": 0.001},
        options={"lpips": {"backbone_weights": missing}, "id": {"weights": missing}, "bg": {"anything": 1}},
    )
    assert loss.active_terms == ("l2", "delta_w")
    assert not any(isinstance(m, (LPIPSLoss, IdentityLoss)) for m in loss.modules())
    assert not any(isinstance(m, BackgroundDepthTerm) for m in loss.modules())  # {"anything": 1} never read
    inputs = LossInputs(reconstruction=torch.zeros(1, 3, 8, 8), target=torch.ones(1, 3, 8, 8), ws=torch.zeros(1, 14, 4))
    result = loss(inputs)  # no discriminator, no front render needed
    assert set(result.values) == {"l2", "delta_w"} and result.total.item() == pytest.approx(1.0)
    # A switched-on term whose weights file is missing fails at build time, naming the file.
    with pytest.raises(LPIPSWeightsError, match="does_not_exist.pth"):
        WeightedLossTerms({"lpips": 0.8}, options={"lpips": {"backbone_weights": missing}})


def test_weighted_loss_terms_reject_bad_configs_and_missing_inputs() -> None:
    with pytest.raises(ValueError, match="unknown loss term.*'l1'"):
        WeightedLossTerms({"l1": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        WeightedLossTerms({"l2": -1.0})
    with pytest.raises(ValueError, match="'adv' is switched on but LossInputs.latent_discriminator is None"):
        WeightedLossTerms({"adv": 0.05})(LossInputs(ws=torch.zeros(1, 14, 4)))
    assert set(GOAE_LOSS_WEIGHTS) == {"l2", "lpips", "id", "adv", "bg", "delta_w"}


def test_weighted_loss_terms_accept_hydra_config(alexnet_file: Path) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "_target_": "losses.WeightedLossTerms",
            "weights": {"l2": 1.0, "lpips": 0.8, "id": 0.0, "delta_w": 0.001},
            "options": {"lpips": {"backbone_weights": str(alexnet_file)}, "delta_w": {"norm": "stacked"}},
        }
    )
    loss = instantiate(cfg)
    assert loss.active_terms == ("l2", "lpips", "delta_w")
    ws = _ws_with_known_offsets()
    result = loss(LossInputs(reconstruction=torch.zeros(2, 3, 32, 32), target=torch.zeros(2, 3, 32, 32), ws=ws))
    assert result.values["delta_w"].item() == pytest.approx(delta_w_stacked_norm(ws).item())


# --------------------------------------------------------------------------- optimisers


def _psp_ranger_reference(
    params: list[torch.Tensor], grads_per_step: list[list[torch.Tensor]], lr: float
) -> list[torch.Tensor]:
    """The Ranger 20.4.11 update rule pSp/e4e use (independent implementation, written from the algorithm):
    GC on dim > 1 grads; Adam moments; RAdam rectification when N_sma > 5, else SGD with bias-corrected
    momentum; Lookahead (alpha 0.5) every k = 6 steps."""
    beta1, beta2, eps, alpha, k = 0.95, 0.999, 6.1e-5, 0.5, 6
    params = [p.clone() for p in params]
    slow = [p.clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    n_sma_max = 2 / (1 - beta2) - 1
    for t, grads in enumerate(grads_per_step, start=1):
        for i, grad in enumerate(grads):
            g = grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True) if grad.dim() > 1 else grad
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            beta2_t = beta2**t
            n_sma = n_sma_max - 2 * t * beta2_t / (1 - beta2_t)
            if n_sma > 5:
                rect = math.sqrt(
                    (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
                )
                params[i] = params[i] - lr * rect / (1 - beta1**t) * m[i] / (v[i].sqrt() + eps)
            else:
                params[i] = params[i] - lr / (1 - beta1**t) * m[i]
            if t % k == 0:
                slow[i] = slow[i] + alpha * (params[i] - slow[i])
                params[i] = slow[i].clone()
    return params


@pytest.mark.numerics
@pytest.mark.parametrize("target", ["losses.optimizers.ranger", "pytorch_optimizer.Ranger"])
def test_ranger_partial_follows_psp_ranger_step_by_step(target: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = {"_target_": target, "_partial_": True, "lr": 1e-2, "betas": [0.95, 0.999]}
    if target == "pytorch_optimizer.Ranger":  # the raw class needs pSp's warm-up and eps explicitly
        cfg.update(degenerated_to_sgd=True, eps=6.1e-5)
    make_optimizer = instantiate(OmegaConf.create(cfg))
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    start = [p.detach().clone() for p in layer.parameters()]
    optimizer = make_optimizer(layer.parameters())
    inputs = torch.randn(14, 5, 4)
    grads_per_step = []
    for step in range(14):  # warm-up (N_sma < 5), rectified steps, two Lookahead syncs
        optimizer.zero_grad()
        layer(inputs[step]).pow(2).mean().backward()
        # What the reference sees must be the raw gradient (Ranger centralises p.grad in place).
        grads_per_step.append([p.grad.detach().clone() for p in layer.parameters()])
        optimizer.step()
    expected = _psp_ranger_reference(start, grads_per_step, lr=1e-2)
    for got, want in zip(layer.parameters(), expected):
        # rule 2: 14 steps of about 10 element-wise operations and the centralisation mean (4 values)
        assert_close_roundoff(got.detach(), want, roundings=14 * 14)


def test_adam_partials_for_the_latent_discriminator() -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    params = [nn.Parameter(torch.zeros(2))]
    for target in ("torch.optim.Adam", "losses.optimizers.adam"):
        optimizer = instantiate(OmegaConf.create({"_target_": target, "_partial_": True, "lr": 2e-5}))(params)
        assert isinstance(optimizer, torch.optim.Adam)
        assert optimizer.param_groups[0]["lr"] == 2e-5 and tuple(optimizer.param_groups[0]["betas"]) == (0.9, 0.999)


def test_background_term_needs_exactly_one_source_of_d_avg() -> None:
    with pytest.raises(ValueError, match="exactly one of options.bg.stats"):
        WeightedLossTerms({"bg": 5.0}, options={"bg": {}})
    with pytest.raises(ValueError, match="exactly one of options.bg.stats"):
        WeightedLossTerms({"bg": 5.0}, options={"bg": {"stats": "x.json", "depth_average": 2.0}})


# --------------------------------------------------------------------------- latent supervision (synthetic data)


@pytest.mark.numerics
def test_latent_supervision_is_the_mean_squared_latent_error_and_needs_ground_truth() -> None:
    from losses.latent_supervision import latent_l2_loss

    ws = torch.zeros(2, 14, 4, requires_grad=True)
    ws_true = torch.zeros(2, 14, 4)
    ws_true[0, 3, 1] = 2.0  # one element off by 2 in 2*14*4 = 112 elements -> 4 / 112
    assert latent_l2_loss(ws, ws_true).item() == pytest.approx(4.0 / 112)
    loss = WeightedLossTerms({"l2": 0.0, "latent": 10.0})
    assert loss.active_terms == ("latent",)
    result = loss(LossInputs(ws=ws, ws_true=ws_true))
    assert result.total.item() == pytest.approx(10 * 4.0 / 112)
    result.total.backward()
    expected_grad = torch.zeros_like(ws_true)
    expected_grad[0, 3, 1] = 10 * 2 * (0.0 - 2.0) / 112  # d/dw of 10 * mean((w - w_true)^2)
    torch.testing.assert_close(ws.grad, expected_grad)
    with pytest.raises(ValueError, match="'latent' needs the ground-truth w\\+.*only synthetic data"):
        loss(LossInputs(ws=torch.zeros(2, 14, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        latent_l2_loss(torch.zeros(2, 14, 4), torch.zeros(2, 14, 5))
    assert "latent" not in GOAE_LOSS_WEIGHTS  # not one of the paper's terms: off unless asked for
