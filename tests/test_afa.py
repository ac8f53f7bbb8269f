"""AFA networks (FiLM forms, variants, shapes) and loading the authors' released afa_FFHQ.pt layout."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from networks.afa import (
    TINY_AFA_CONFIG,
    AdaptiveFeatureAlignment,
    AFAConfig,
    AFAOutput,
    EqualizedConv2d,
    PlainCNNAlignment,
    ResidualEncoder,
    apply_film,
    build_feature_alignment,
    delta_feature_penalty,
    feature_tokens,
    image_residual,
    resume_state,
    tokens_to_map,
)
from networks.afa_checkpoint import (
    AFACheckpointError,
    load_released_afa,
    load_released_afa_state_into,
    map_released_afa_key,
    map_released_afa_state_dict,
)
from networks.eg3d.outputs import BackboneFeatures
from tolerances import assert_close_roundoff

MANIFEST = Path(__file__).parent / "data" / "goae_afa_keys.json"
TINY = TINY_AFA_CONFIG
TINY_RES = TINY.residual_resolution


def _images(batch: int = 2, side: int = TINY_RES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, side, side, generator=generator), torch.randn(
        batch, 3, side, side, generator=generator
    )


def _features(batch: int = 2, channels: int = 32, side: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, side, side, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ FiLM
def test_film_identity_direct_form() -> None:
    features = _features()
    refined = apply_film(features, torch.ones_like(features), torch.zeros_like(features), "direct")
    assert torch.equal(refined, features)


def test_film_forms_closed_form() -> None:
    features = torch.tensor([2.0, -1.0])
    gamma, beta = torch.tensor([0.5, 3.0]), torch.tensor([1.0, -2.0])
    assert apply_film(features, gamma, beta, "direct").tolist() == [2.0, -5.0]
    assert apply_film(features, gamma, beta, "residual").tolist() == [4.0, -6.0]
    with pytest.raises(ValueError, match="modulation"):
        apply_film(features, gamma, beta, "additive")  # type: ignore[arg-type]


@pytest.mark.parametrize("heads", ["attention", "conv"])
def test_residual_form_is_the_identity_at_init_and_can_learn(heads: str) -> None:
    torch.manual_seed(0)
    afa = AdaptiveFeatureAlignment(replace(TINY, heads=heads, modulation="residual")).train()  # dropout on
    features = _features()
    out = afa(*_images(), features)
    assert torch.equal(out.refined_features, features)
    assert torch.equal(out.gamma, torch.zeros_like(features)) and torch.equal(
        out.beta, torch.zeros_like(features)
    )
    (out.refined_features * torch.randn_like(features)).sum().backward()
    assert afa.gamma_output.weight.grad.abs().sum() > 0 and afa.beta_output.weight.grad.abs().sum() > 0


def test_plain_cnn_residual_form_is_the_identity_at_init() -> None:
    ablation = PlainCNNAlignment(replace(TINY, modulation="residual"))
    features = _features()
    assert torch.equal(ablation(*_images(), features).refined_features, features)


def test_delta_feature_penalty_closed_form() -> None:
    features = _features()
    assert delta_feature_penalty(features + 2.0, features).item() == pytest.approx(4.0)
    assert delta_feature_penalty(features, features).item() == 0.0


# ------------------------------------------------------------------------------------------ wiring
def test_image_residual_is_reconstruction_minus_input() -> None:
    input_image, reconstruction = _images()
    assert torch.equal(image_residual(input_image, reconstruction), reconstruction - input_image)


def test_tokens_round_trip_row_major() -> None:
    feature_map = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    tokens = feature_tokens(feature_map)
    assert tokens.shape == (2, 20, 3)
    assert tokens[1, 2 * 5 + 1, 2] == feature_map[1, 2, 2, 1]  # token index = row * W + col
    assert torch.equal(tokens_to_map(tokens, 4, 5), feature_map)


def test_direct_afa_gamma_and_beta_come_from_their_heads_on_normalised_tokens() -> None:
    """Hand-composed forward from the parts: LN(F tokens) as queries, encoder(rec - input) as memory."""
    torch.manual_seed(0)
    afa = AdaptiveFeatureAlignment(TINY).eval()
    input_image, reconstruction = _images()
    features = _features() * 5 + 3  # LayerNorm on the queries must remove this scale and shift
    out = afa(input_image, reconstruction, features)
    memory = F.layer_norm(feature_tokens(afa.residual_encoder(reconstruction - input_image)), (32,))
    queries = F.layer_norm(feature_tokens(features), (32,))
    gamma = tokens_to_map(afa.gamma_head(queries, memory), 8, 8)
    beta = tokens_to_map(afa.beta_head(queries, memory), 8, 8)
    torch.testing.assert_close(out.gamma, gamma)
    torch.testing.assert_close(out.beta, beta)
    torch.testing.assert_close(out.refined_features, gamma * features + beta)
    assert not torch.allclose(out.gamma, out.beta)


def test_conv_heads_apply_conv_gamma_and_conv_beta_to_one_alignment() -> None:
    torch.manual_seed(0)
    afa = AdaptiveFeatureAlignment(replace(TINY, heads="conv")).eval()
    input_image, reconstruction = _images()
    features = _features()
    out = afa(input_image, reconstruction, features)
    memory = afa.residual_tokens(input_image, reconstruction)
    aligned = tokens_to_map(afa.alignment(F.layer_norm(feature_tokens(features), (32,)), memory), 8, 8)
    torch.testing.assert_close(out.gamma, afa.gamma_conv(aligned))
    torch.testing.assert_close(out.beta, afa.beta_conv(aligned))
    assert not any(key.startswith(("gamma_head", "beta_head")) for key in afa.state_dict())


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("feature_side", [8, 16])  # b32-like and b64-like query grids of the tiny generator
@pytest.mark.parametrize("variant", ["afa", "plain_cnn"])
def test_tiny_output_shapes(feature_side: int, variant: str) -> None:
    torch.manual_seed(0)
    network = build_feature_alignment(
        variant,
        feature_channels=32,
        residual_resolution=64,
        num_heads=4,
        feedforward_dim=64,
        max_kv_grid=8,
        residual_encoder={
            "stem_channels": 8,
            "group_channels": [8, 16, 32],
            "units_per_group": 2,
            "se_reduction": 4,
            "output_channels": 32,
        },
    )
    features = _features(side=feature_side)
    out = network(*_images(), features)
    assert isinstance(out, AFAOutput)
    for tensor in (out.refined_features, out.gamma, out.beta):
        assert tensor.shape == features.shape


def test_residual_encoder_downsamples_by_eight() -> None:
    encoder = ResidualEncoder(TINY.residual_encoder)
    assert encoder(torch.randn(1, 3, 64, 64)).shape == (1, 32, 8, 8)


def test_kv_tokens_are_average_pooled_to_max_kv_grid() -> None:
    torch.manual_seed(0)
    config = replace(TINY, residual_resolution=128, max_kv_grid=8)  # encoder gives 16x16 -> 8x8
    afa = AdaptiveFeatureAlignment(config).eval()
    input_image, reconstruction = _images(side=128)
    tokens = afa.residual_tokens(input_image, reconstruction)
    assert tokens.shape == (2, 64, 32)
    raw = afa.residual_encoder(reconstruction - input_image)  # [2, 32, 16, 16]
    pooled = raw.reshape(2, 32, 8, 2, 8, 2).mean(dim=(3, 5))
    torch.testing.assert_close(tokens, F.layer_norm(feature_tokens(pooled), (32,)))
    queries = _features(side=16)  # b64-like: 256 queries attend to 64 keys
    assert afa(input_image, reconstruction, queries).refined_features.shape == queries.shape


def test_full_configuration_construct_only() -> None:
    config = AFAConfig()
    assert config.kv_grid == 64 and replace(config, refined_block="b64").kv_grid == 64
    afa = AdaptiveFeatureAlignment(config)
    shapes = {key: tuple(value.shape) for key, value in afa.state_dict().items()}
    assert shapes["residual_encoder.stem.0.weight"] == (64, 3, 3, 3)
    assert shapes["residual_encoder.to_features.0.weight"] == (512, 256, 3, 3)
    assert shapes["residual_encoder.to_features.2.weight"] == (512, 512, 3, 3)
    assert shapes["gamma_head.attention.in_proj_weight"] == (1536, 512)
    assert shapes["beta_head.feedforward_in.weight"] == (1024, 512)
    assert len(afa.residual_encoder.units) == 9


def test_equalized_conv_scales_the_weight_at_run_time() -> None:
    conv = EqualizedConv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 5, 5)
    expected = F.conv2d(x, conv.weight / math.sqrt(4 * 9), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)


def test_input_validation_and_resume_state() -> None:
    afa = AdaptiveFeatureAlignment(TINY)
    with pytest.raises(ValueError, match="images"):
        afa(*_images(side=32), _features())
    with pytest.raises(ValueError, match="F"):
        afa(*_images(), _features(channels=16))
    with pytest.raises(ValueError, match="refined_block"):
        AFAConfig(refined_block="b128")
    with pytest.raises(ValueError, match="modulation"):
        AFAConfig(modulation="one_plus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_channels must equal feature_channels"):
        AFAConfig(feature_channels=32)
    features, refined = _features(), _features(seed=5)
    state = BackboneFeatures(block="b32", features=features, skip_image=torch.zeros(2, 96, 8, 8))
    output = AFAOutput(refined_features=refined, gamma=refined, beta=refined)
    resumed = resume_state(state, output, TINY)
    assert resumed.features is refined and resumed.skip_image is state.skip_image and resumed.block == "b32"
    with pytest.raises(ValueError, match="b64"):
        resume_state(state, output, replace(TINY, refined_block="b64"))


# ------------------------------------------------------------------------------ released checkpoint
def _manifest_entries() -> list[dict]:
    return json.loads(MANIFEST.read_text())["entries"]


def _random_released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the authors' keys and shapes; BN statistics kept plausible."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for entry in _manifest_entries():
        key, shape = entry["key"], entry["shape"]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.startswith("output_layer") and key.endswith("weight"):
            state[key] = torch.randn(
                shape, generator=generator
            )  # equalised: unit variance, scaled at run time
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    return state


def test_manifest_maps_onto_the_full_afa_exactly() -> None:
    expected = {key: tuple(value.shape) for key, value in AdaptiveFeatureAlignment().state_dict().items()}
    mapped = {map_released_afa_key(entry["key"]): tuple(entry["shape"]) for entry in _manifest_entries()}
    assert None not in mapped
    assert len(mapped) == len(_manifest_entries()) == 174  # no two keys collapse onto one
    assert mapped == expected


def test_released_state_dict_loads_strictly_and_places_every_value() -> None:
    theirs = _random_released_state()
    afa = AdaptiveFeatureAlignment()
    load_released_afa_state_into(afa, theirs, "test")
    ours = afa.state_dict()
    for their_key, tensor in theirs.items():
        assert torch.equal(ours[map_released_afa_key(their_key)], tensor), their_key
    # Spot checks of the table in docs/afa.md, including the two heads not being swapped.
    pairs = {
        "cross_att_gamma.linear1.weight": "gamma_head.feedforward_in.weight",
        "cross_att_beta.linear2.bias": "beta_head.feedforward_out.bias",
        "cross_att_beta.multihead_attn.in_proj_weight": "beta_head.attention.in_proj_weight",
        "body.3.shortcut_layer.0.weight": "residual_encoder.units.3.shortcut_layer.0.weight",
        "body.8.res_layer.5.fc1.weight": "residual_encoder.units.8.res_layer.5.fc1.weight",
        "body.8.res_layer.5.fc2.weight": "residual_encoder.units.8.res_layer.5.fc2.weight",
        "output_layer.2.bias": "residual_encoder.to_features.2.bias",
        "input_layer.2.weight": "residual_encoder.stem.2.weight",
    }
    for their_key, our_key in pairs.items():
        assert torch.equal(ours[our_key], theirs[their_key]), their_key


def _authors_reference_forward(
    sd: dict[str, torch.Tensor], image: torch.Tensor, reconstruction: torch.Tensor, feature_map: torch.Tensor
) -> torch.Tensor:
    """The released AFA written out with functional ops from its state dict (eval mode), for comparison."""

    def batch_norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(
            x,
            sd[f"{prefix}.running_mean"],
            sd[f"{prefix}.running_var"],
            sd[f"{prefix}.weight"],
            sd[f"{prefix}.bias"],
            training=False,
            eps=1e-5,
        )

    x = reconstruction - image
    x = F.prelu(
        batch_norm(F.conv2d(x, sd["input_layer.0.weight"], padding=1), "input_layer.1"),
        sd["input_layer.2.weight"],
    )
    unit = 0
    for in_channels, depth in ((64, 64), (64, 128), (128, 256)):
        for position in range(3):
            stride, cin = (2, in_channels) if position == 0 else (1, depth)
            p = f"body.{unit}"
            if cin == depth:
                shortcut = F.max_pool2d(x, 1, stride)
            else:
                shortcut = batch_norm(
                    F.conv2d(x, sd[f"{p}.shortcut_layer.0.weight"], stride=stride), f"{p}.shortcut_layer.1"
                )
            r = F.conv2d(batch_norm(x, f"{p}.res_layer.0"), sd[f"{p}.res_layer.1.weight"], padding=1)
            r = F.prelu(r, sd[f"{p}.res_layer.2.weight"])
            r = batch_norm(
                F.conv2d(r, sd[f"{p}.res_layer.3.weight"], stride=stride, padding=1), f"{p}.res_layer.4"
            )
            gate = F.conv2d(
                F.relu(F.conv2d(r.mean(dim=(2, 3), keepdim=True), sd[f"{p}.res_layer.5.fc1.weight"])),
                sd[f"{p}.res_layer.5.fc2.weight"],
            )
            x = r * torch.sigmoid(gate) + shortcut
            unit += 1
    x = F.conv2d(x, sd["output_layer.0.weight"] / math.sqrt(256 * 9), sd["output_layer.0.bias"], padding=1)
    x = F.leaky_relu(x, 0.2) * math.sqrt(2)
    x = F.conv2d(x, sd["output_layer.2.weight"] / math.sqrt(512 * 9), sd["output_layer.2.bias"], padding=1)
    kv = F.layer_norm(x.flatten(2).permute(0, 2, 1), (512,))
    n, c, h, w = feature_map.shape
    q = F.layer_norm(feature_map.flatten(2).permute(0, 2, 1), (512,))

    def cross_attention(prefix: str) -> torch.Tensor:
        attended, _ = F.multi_head_attention_forward(
            q.transpose(0, 1),
            kv.transpose(0, 1),
            kv.transpose(0, 1),
            512,
            4,
            sd[f"{prefix}.multihead_attn.in_proj_weight"],
            sd[f"{prefix}.multihead_attn.in_proj_bias"],
            None,
            None,
            False,
            0.0,
            sd[f"{prefix}.multihead_attn.out_proj.weight"],
            sd[f"{prefix}.multihead_attn.out_proj.bias"],
            training=False,
            need_weights=False,
        )
        t = F.layer_norm(q + attended.transpose(0, 1), (512,))
        t = t + F.linear(
            F.relu(F.linear(t, sd[f"{prefix}.linear1.weight"], sd[f"{prefix}.linear1.bias"])),
            sd[f"{prefix}.linear2.weight"],
            sd[f"{prefix}.linear2.bias"],
        )
        return t.permute(0, 2, 1).reshape(n, c, h, w)

    return cross_attention("cross_att_gamma") * feature_map + cross_attention("cross_att_beta")


@pytest.mark.numerics
def test_loaded_released_weights_compute_the_authors_function() -> None:
    """Full widths, small images (64 -> 8x8 KV tokens) and a 4x4 F, so it runs in about a second."""
    theirs = _random_released_state(seed=3)
    afa = AdaptiveFeatureAlignment(AFAConfig(residual_resolution=64)).eval()
    load_released_afa_state_into(afa, theirs, "test")
    generator = torch.Generator().manual_seed(4)
    image, reconstruction = (
        torch.randn(1, 3, 64, 64, generator=generator),
        torch.randn(1, 3, 64, 64, generator=generator),
    )
    feature_map = torch.randn(1, 512, 4, 4, generator=generator)
    with torch.no_grad():
        ours = afa(image, reconstruction, feature_map).refined_features
        reference = _authors_reference_forward(theirs, image, reconstruction, feature_map)
    # Rule 2 of tests/README.md: stem (27) + 9 IR-SE units (2 convs of K up to 256 x 9) + 2 output convs
    # (256 x 9, 512 x 9) + layer norm and cross-attention (512-wide projections, 1,024 hidden): ~52,000.
    assert_close_roundoff(ours, reference, roundings=52_000)


def test_load_released_afa_from_file(tmp_path: Path) -> None:
    theirs = _random_released_state()
    path = tmp_path / "afa_FFHQ.pt"
    torch.save(theirs, path)
    afa = load_released_afa(path)
    assert torch.equal(
        afa.state_dict()["gamma_head.feedforward_out.weight"], theirs["cross_att_gamma.linear2.weight"]
    )


def test_missing_file_says_where_it_comes_from(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Google Drive.*jiangyzy/GOAE"):
        load_released_afa(tmp_path / "afa_FFHQ.pt")


def test_checkpoint_errors_list_the_offending_keys() -> None:
    theirs = _random_released_state()
    with pytest.raises(AFACheckpointError, match=r"no mapping rule covers: \['decoder.weight'\]"):
        map_released_afa_state_dict({**theirs, "decoder.weight": torch.zeros(1)})
    incomplete = dict(theirs)
    del incomplete["cross_att_beta.linear1.bias"]
    with pytest.raises(AFACheckpointError, match=r"missing \['beta_head.feedforward_in.bias'\]"):
        load_released_afa_state_into(AdaptiveFeatureAlignment(), incomplete, "test")
    with pytest.raises(AFACheckpointError, match="wrong shapes"):
        load_released_afa_state_into(AdaptiveFeatureAlignment(TINY), theirs, "test")
    with pytest.raises(AFACheckpointError, match="missing .*gamma_output.weight"):
        load_released_afa_state_into(
            AdaptiveFeatureAlignment(replace(AFAConfig(), modulation="residual")), theirs, "t"
        )


def test_data_parallel_prefix_is_stripped() -> None:
    theirs = {f"module.{key}": value for key, value in _random_released_state().items()}
    load_released_afa_state_into(AdaptiveFeatureAlignment(), theirs, "test")


# ------------------------------------------------------------------------------ with the tiny generator
def test_tiny_pipeline_residual_afa_at_init_reproduces_the_wplus_planes() -> None:
    """Tiny EG3D (b32 F: 32 x 32 x 32, image 64) -> AFA -> resume -> mix; F* == F gives the w+ planes back."""
    from cameras import canonical_camera_label
    from networks.eg3d.configs import build_generator
    from networks.occlusion_mix import OcclusionMixConfig, occlusion_aware_mix

    torch.manual_seed(0)
    generator = build_generator("tiny").eval()
    afa = AdaptiveFeatureAlignment(replace(TINY, modulation="residual"))
    camera = canonical_camera_label()
    with torch.no_grad():
        ws = generator.mapping(torch.randn(1, generator.backbone.mapping.z_dim), camera)
        state = generator.synthesize_features(ws, until_block="b32")
        wplus_planes = generator.synthesize_planes_from_features(ws, state)
        reconstruction = generator.render_planes(wplus_planes, ws, camera).image
        out = afa(torch.rand(1, 3, 64, 64) * 2 - 1, reconstruction, state.features)
        refined_planes = generator.synthesize_planes_from_features(ws, resume_state(state, out, afa.config))
        refined_render = generator.render_planes(refined_planes, ws, camera)
        mix = occlusion_aware_mix(
            refined_planes,
            wplus_planes,
            refined_render,
            float(generator.rendering_kwargs["box_warp"]),
            generator.renderer.plane_projection,
            OcclusionMixConfig(),
        )
    assert state.features.shape == (1, 32, 32, 32)
    assert torch.equal(refined_planes, wplus_planes)
    torch.testing.assert_close(mix.novel_view_planes, wplus_planes)
    assert mix.masks.shape == (1, 3, 1, 256, 256)
