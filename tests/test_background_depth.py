"""Background depth regularisation: masks, D_avg estimation, stats files and L_BG against hand computation."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from cameras import canonical_camera_label
from losses.background import (
    BackgroundDepthAccumulator,
    BackgroundDepthLoss,
    BackgroundDepthStats,
    BackgroundDepthStatsError,
    BackgroundLossForm,
    FaceParsingBackgroundMasker,
    FrontViewRender,
    GeneratorRecord,
    GeometricBackgroundMasker,
    default_stats_path,
    estimate_background_depth,
    load_background_depth_stats,
    otsu_thresholds,
    per_pixel_path_for,
    render_front_depth,
    save_background_depth_stats,
    without_per_pixel_map,
)
from tolerances import roundoff_bound

RAY_START, RAY_END = 2.25, 3.3


# ------------------------------------------------------------------ a generator with a known depth map
@dataclass
class StubSynthesis:
    image: torch.Tensor
    image_depth: torch.Tensor
    weights_sum: torch.Tensor


class StubGenerator:
    """Sample k (counted across calls) has background = rows 0..2 and columns < k+1, depth there
    3.0 (k even) or 3.2 (k odd), 2.5 elsewhere. Row 3 is never background. Checks that mapping and
    rendering both use the canonical camera."""

    z_dim = 5
    neural_rendering_resolution = 4
    rendering_kwargs = {
        "ray_start": RAY_START,
        "ray_end": RAY_END,
        "depth_resolution": 3,
        "depth_resolution_importance": 2,
    }

    def __init__(self) -> None:
        self.rendered = 0
        self.draws_seen: list[object] = []

    def mapping(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
        assert torch.equal(c, canonical_camera_label(z.shape[0]))
        return z[:, None, :].expand(-1, 14, -1)

    def synthesis(
        self, ws: torch.Tensor, c: torch.Tensor, noise_mode: str = "const", draws: object = None
    ) -> StubSynthesis:
        assert torch.equal(c, canonical_camera_label(ws.shape[0]))
        self.draws_seen.append(draws)
        depth = torch.full((ws.shape[0], 1, 4, 4), 2.5)
        for row in range(ws.shape[0]):
            k = self.rendered + row
            depth[row, 0, :3, : k + 1] = 3.0 if k % 2 == 0 else 3.2
        self.rendered += ws.shape[0]
        return StubSynthesis(
            image=torch.zeros(ws.shape[0], 3, 8, 8), image_depth=depth, weights_sum=torch.ones_like(depth)
        )


class DepthAboveMasker:
    method = GeometricBackgroundMasker.method  # recorded as 'geometric'

    def __call__(self, render: FrontViewRender) -> torch.Tensor:
        return (render.depth > 2.75).float()

    def parameters_for_record(self) -> dict[str, float]:
        return {"threshold": 2.75}


def test_estimate_closed_form_scalar_and_per_pixel() -> None:
    stats = estimate_background_depth(
        StubGenerator(),
        DepthAboveMasker(),
        num_samples=4,
        batch_size=3,
        generator_record=GeneratorRecord("stub", None, None),
    )
    # background pixels: 3*(k+1) for k = 0..3 -> 3, 6, 9, 12 (30); depth sum 9 + 19.2 + 27 + 38.4 = 93.6
    # 3.2 is inexact in float32; a float32 sum of 30 depths then one division (rule 2)
    assert stats.mean_depth == pytest.approx(93.6 / 30, abs=roundoff_bound(3.2, 31, path_magnitude=93.6))
    expected_row = torch.tensor([(3.0 + 3.2 + 3.0 + 3.2) / 4, (3.2 + 3.0 + 3.2) / 3, (3.0 + 3.2) / 2, 3.2])
    expected = torch.stack(
        [expected_row] * 3 + [torch.full((4,), 93.6 / 30)]
    )  # row 3: never background -> scalar
    torch.testing.assert_close(stats.per_pixel, expected.float())
    assert stats.fallback_pixels == 4
    assert stats.num_samples == 4 and stats.neural_rendering_resolution == 4
    assert stats.background_fraction == pytest.approx(30 / 64)
    assert stats.mask_method == "geometric" and stats.mask_parameters == {"threshold": 2.75}


def test_estimate_constant_background_is_exactly_its_depth() -> None:
    class ConstantBackground(StubGenerator):
        def synthesis(self, ws, c, noise_mode="const", draws=None):  # type: ignore[no-untyped-def]
            out = super().synthesis(ws, c, noise_mode, draws)
            out.image_depth[out.image_depth > 2.75] = 3.0
            return out

    generator = ConstantBackground()
    masker = GeometricBackgroundMasker()  # the real rule on a two-level depth map
    stats = estimate_background_depth(generator, masker, 5, GeneratorRecord("stub", None, None), batch_size=2)
    assert stats.mean_depth == 3.0
    assert all(
        draws is not None for draws in generator.draws_seen
    )  # deterministic draws, never fresh random ones
    assert generator.rendered == 5


def test_estimate_reports_when_no_background() -> None:
    class NeverBackground(DepthAboveMasker):
        def __call__(self, render: FrontViewRender) -> torch.Tensor:
            return torch.zeros_like(render.depth)

    with pytest.raises(RuntimeError, match="no background pixel in 2 samples"):
        estimate_background_depth(StubGenerator(), NeverBackground(), 2, GeneratorRecord("stub", None, None))


def test_accumulator_rejects_wrong_resolution() -> None:
    with pytest.raises(ValueError, match=r"\[N, 1, 4, 4\]"):
        BackgroundDepthAccumulator(4).add(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_render_front_depth_uses_canonical_camera() -> None:
    generator = StubGenerator()
    render = render_front_depth(generator, torch.zeros(2, 14, 5))
    assert render.depth.shape == (2, 1, 4, 4) and render.weights_sum.shape == (2, 1, 4, 4)
    assert render.image.shape == (2, 3, 8, 8)


# ------------------------------------------------------------------ masks
def test_otsu_splits_two_levels_and_handles_constant_rows() -> None:
    values = torch.tensor([[2.5, 2.5, 2.5, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0, 3.0], [1.0, 1.1, 1.0, 5.0, 5.1]])
    thresholds = otsu_thresholds(values, num_bins=64)
    assert 2.5 < thresholds[0] <= 3.0
    assert thresholds[1] == 3.0
    assert 1.1 < thresholds[2] <= 5.0


def _render(depth: torch.Tensor, opacity: torch.Tensor | None = None) -> FrontViewRender:
    return FrontViewRender(
        depth=depth,
        image=torch.zeros(depth.shape[0], 3, 8, 8),
        weights_sum=torch.ones_like(depth) if opacity is None else opacity,
    )


def test_geometric_mask_is_the_far_class_of_each_image() -> None:
    masker = GeometricBackgroundMasker(histogram_bins=64)
    depth = torch.full((3, 1, 2, 2), 2.5)
    depth[0, 0, 0, :] = 3.1  # a far wall in sample 0
    depth[1] = torch.tensor([[2.70, 2.71], [2.60, 2.61]])  # a flattened image: its far part is still selected
    mask = masker(_render(depth.requires_grad_()))
    expected = torch.zeros_like(depth)
    expected[0, 0, 0, :] = 1.0
    expected[1, 0, 0, :] = 1.0
    expected[2] = 1.0  # constant depth: no split, everything is the far class (documented)
    torch.testing.assert_close(mask, expected)
    assert not mask.requires_grad


class HalfBackgroundParser(nn.Module):
    """Class 0 wins in the left `background_columns` image columns, class 1 elsewhere."""

    def __init__(self, background_columns: int) -> None:
        super().__init__()
        self.background_columns = background_columns
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        logits = torch.zeros(x.shape[0], 19, x.shape[2], x.shape[3])
        logits[:, 0, :, : self.background_columns] = 1.0
        logits[:, 1, :, self.background_columns :] = 1.0
        return logits


def test_face_parsing_mask_area_fraction_threshold() -> None:
    # 512 px wide, 4 depth columns of 128 px; background = the left 192 px: column 0 full, column 1 half.
    parser = HalfBackgroundParser(192)
    render = _render(torch.zeros(1, 1, 4, 4, requires_grad=True))
    render.image = torch.zeros(1, 3, 64, 64, requires_grad=True)
    half_counts = FaceParsingBackgroundMasker(parser, min_background_fraction=0.5)(render)  # type: ignore[arg-type]
    torch.testing.assert_close(half_counts[0, 0], torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 4))
    strict = FaceParsingBackgroundMasker(parser, min_background_fraction=0.6)(render)  # type: ignore[arg-type]
    torch.testing.assert_close(strict[0, 0], torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 4))
    assert parser.inputs[0].shape == (1, 3, 512, 512) and not strict.requires_grad


# ------------------------------------------------------------------ loss
def test_loss_matches_hand_computation_both_forms() -> None:
    depth = torch.tensor([[[[3.5, 2.0], [3.0, 2.2]]], [[[2.5, 9.0], [3.0, 3.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]]])
    # masked errors vs D_avg 3.0: sample 0 -> (0.5, 0), sample 1 -> (-0.5, 0); everything else masked out
    mse = BackgroundDepthLoss(3.0)(depth, mask)
    assert mse.item() == pytest.approx((0.25 + 0.25) / 8)
    paper = BackgroundDepthLoss(3.0, BackgroundLossForm.PAPER_L2_NORM)(depth, mask)
    assert paper.item() == pytest.approx((0.5 + 0.5) / 2)


def test_loss_per_pixel_target() -> None:
    target = torch.tensor([[3.0, 3.1], [3.2, 3.3]])
    depth = torch.tensor([[[[3.0, 3.0], [3.0, 3.0]]]])
    loss = BackgroundDepthLoss(target, "paper_l2_norm")(depth, torch.ones_like(depth))
    assert loss.item() == pytest.approx(math.sqrt(0.01 + 0.04 + 0.09))
    with pytest.raises(ValueError, match="per-pixel D_avg"):
        BackgroundDepthLoss(target)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("form", list(BackgroundLossForm))
def test_loss_zero_when_background_at_target_whatever_the_foreground(form: BackgroundLossForm) -> None:
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :, :2] = 1.0
    depth = torch.where(mask.bool(), torch.tensor(3.05), torch.rand(2, 1, 4, 4) * 5).requires_grad_()
    loss = BackgroundDepthLoss(3.05, form)(depth, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(depth.grad).all() and depth.grad.abs().max() == 0.0  # no NaN from the norm at 0


def test_loss_gradient_only_through_depth_on_background() -> None:
    depth = torch.full((1, 1, 2, 2), 2.0, requires_grad=True)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]], requires_grad=True)
    BackgroundDepthLoss(3.0)(depth, mask).backward()
    assert mask.grad is None
    # d/dD of (D - 3)^2 / 4 at D = 2 on the one background pixel: 2 * (-1) / 4
    torch.testing.assert_close(depth.grad, torch.tensor([[[[-0.5, 0.0], [0.0, 0.0]]]]))


def test_loss_target_is_not_in_state_dict_and_follows_dtype() -> None:
    loss = BackgroundDepthLoss(3.0)
    assert dict(loss.state_dict()) == {}
    value = loss(torch.full((1, 1, 2, 2), 2.0, dtype=torch.float64), torch.ones(1, 1, 2, 2))
    assert value.dtype == torch.float64 and value.item() == 1.0


# ------------------------------------------------------------------ stats files
def _stats(per_pixel: torch.Tensor | None = None, resolution: int = 4) -> BackgroundDepthStats:
    return BackgroundDepthStats(
        mean_depth=3.12,
        per_pixel=per_pixel,
        num_samples=4,
        mask_method="geometric",
        mask_parameters={"min_opacity": 0.5},
        generator_name="tiny",
        generator_checkpoint="/x/tiny.pt",
        generator_checkpoint_sha256="ab" * 32,
        neural_rendering_resolution=resolution,
        background_fraction=0.4,
        fallback_pixels=0,
        seed=0,
        truncation_psi=1.0,
        created="2024-01-01T00:00:00+00:00",
    )


def test_stats_round_trip_with_and_without_map(tmp_path: Path) -> None:
    per_pixel = torch.arange(16, dtype=torch.float32).reshape(4, 4) / 10 + 2.5
    path = save_background_depth_stats(_stats(per_pixel), tmp_path / "g.background_depth.json")
    assert per_pixel_path_for(path).name == "g.background_depth.pt" and per_pixel_path_for(path).is_file()
    loaded = load_background_depth_stats(path)
    assert loaded == _stats(None).__class__(**{**vars(_stats(per_pixel)), "per_pixel": loaded.per_pixel})
    torch.testing.assert_close(loaded.per_pixel, per_pixel)
    scalar_only = save_background_depth_stats(without_per_pixel_map(_stats(per_pixel)), tmp_path / "s.json")
    assert load_background_depth_stats(scalar_only).per_pixel is None
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries
    assert BackgroundDepthLoss.from_stats(loaded, target="per_pixel").target.shape == (4, 4)
    assert BackgroundDepthLoss.from_stats(loaded).target.item() == pytest.approx(3.12)


def test_default_stats_path_is_beside_checkpoint() -> None:
    assert default_stats_path("/ckpt/ffhqrebalanced512-128.pkl") == Path(
        "/ckpt/ffhqrebalanced512-128.background_depth.json"
    )


def test_stats_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BackgroundDepthStatsError, match=r"missing\.json' does not exist"):
        load_background_depth_stats(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(BackgroundDepthStatsError, match=r"broken\.json' is not valid JSON"):
        load_background_depth_stats(broken)
    path = save_background_depth_stats(_stats(), tmp_path / "ok.json")
    record = json.loads(path.read_text())
    for field_name, bad in [
        ("mean_depth", "3.1"),
        ("mean_depth", float("nan")),
        ("num_samples", None),
        ("format", "other"),
    ]:
        corrupt = tmp_path / f"corrupt_{field_name}.json"
        corrupt.write_text(json.dumps({**record, field_name: bad}))
        with pytest.raises(BackgroundDepthStatsError, match=corrupt.name.replace(".", r"\.")):
            load_background_depth_stats(corrupt)


def test_per_pixel_file_problems(tmp_path: Path) -> None:
    path = save_background_depth_stats(_stats(torch.full((4, 4), 3.0)), tmp_path / "m.background_depth.json")
    torch.save({"per_pixel": torch.full((4, 4), 2.0)}, per_pixel_path_for(path))
    with pytest.raises(BackgroundDepthStatsError, match="sha256"):
        load_background_depth_stats(path)
    per_pixel_path_for(path).unlink()
    with pytest.raises(BackgroundDepthStatsError, match="does not exist"):
        load_background_depth_stats(path)


def test_resolution_mismatch_with_generator(tmp_path: Path) -> None:
    stats = load_background_depth_stats(
        save_background_depth_stats(_stats(resolution=128), tmp_path / "r.json")
    )

    class Renders16:
        neural_rendering_resolution = 16

    with pytest.raises(BackgroundDepthStatsError, match=r"r\.json.*resolution 128.*renders at 16"):
        stats.check_matches(Renders16(), source=tmp_path / "r.json")  # type: ignore[arg-type]
    stats.check_matches(type("Renders128", (), {"neural_rendering_resolution": 128})())  # type: ignore[arg-type]


def test_gradient_reaches_ws_through_the_tiny_generator_and_not_the_mask() -> None:
    from networks.eg3d.configs import generator_from_config

    generator = generator_from_config("tiny", random_init=True)
    ws = generator.w_avg.detach().expand(2, generator.num_ws, -1) + 0.1 * torch.randn(
        2, generator.num_ws, generator.w_dim
    )
    ws.requires_grad_()
    render = render_front_depth(generator, ws)
    assert render.depth.shape == (2, 1, 16, 16) and render.image.shape == (2, 3, 64, 64)
    mask = GeometricBackgroundMasker()(render)
    assert 0 < mask.sum() < mask.numel() and not mask.requires_grad
    loss = BackgroundDepthLoss(RAY_END)(render.depth, mask)  # a target far behind: a clear non-zero loss
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0


# ------------------------------------------------------------------ the command, end to end (tiny generator)
def test_command_on_tiny_random_generator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from data_prep.estimate_background_depth import main
    from networks.eg3d.configs import generator_from_config

    out = tmp_path / "stats" / "tiny.background_depth.json"
    argv = [
        "--generator",
        "tiny",
        "--random-init",
        "--num-samples",
        "3",
        "--batch-size",
        "2",
        "--mask",
        "geometric",
        "--per-pixel",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == out
    stats = load_background_depth_stats(out)
    assert "D_avg =" in capsys.readouterr().out
    assert stats.num_samples == 3 and stats.mask_method == "geometric" and stats.generator_name == "tiny"
    assert stats.generator_checkpoint is None and stats.neural_rendering_resolution == 16
    assert RAY_START <= stats.mean_depth <= RAY_END and 0.0 < stats.background_fraction < 1.0
    assert stats.per_pixel is not None and stats.per_pixel.shape == (16, 16)
    stats.check_matches(generator_from_config("tiny", random_init=True), source=out)
    # the same seed gives the same estimate (deterministic z and renderer draws)
    again = load_background_depth_stats(
        main(argv[:-4] + ["--out", str(tmp_path / "again.json"), "--device", "cpu"])
    )
    assert again.mean_depth == stats.mean_depth


def test_command_argument_errors(tmp_path: Path) -> None:
    from data_prep.estimate_background_depth import main

    base = ["--generator", "tiny", "--num-samples", "2", "--mask", "geometric"]
    with pytest.raises(SystemExit, match="--random-init"):
        main(base)
    with pytest.raises(SystemExit, match="give --out"):
        main(base + ["--random-init"])
    with pytest.raises(SystemExit, match="--bisenet-weights"):
        main(
            [
                "--generator",
                "tiny",
                "--random-init",
                "--num-samples",
                "2",
                "--mask",
                "bisenet",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
    with pytest.raises(SystemExit, match="does not exist"):
        main(base + ["--checkpoint", str(tmp_path / "missing.pkl")])


def test_command_default_output_is_beside_checkpoint(tmp_path: Path) -> None:
    from data_prep.estimate_background_depth import build_argument_parser, output_path

    checkpoint = tmp_path / "weights" / "ffhqrebalanced512-128.pkl"
    args = build_argument_parser().parse_args(
        [
            "--generator",
            "ffhq512-128",
            "--checkpoint",
            str(checkpoint),
            "--num-samples",
            "1",
            "--mask",
            "geometric",
        ]
    )
    assert output_path(args) == tmp_path / "weights" / "ffhqrebalanced512-128.background_depth.json"
