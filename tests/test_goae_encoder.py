"""GOAE encoder: shapes, w+ assembly, progressive stages, gradients, taps, released-checkpoint mapping."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from timm.models.swin_transformer_v2 import checkpoint_filter_fn
from torch.nn import functional

from networks.encoders import (
    GROUP_NAMES,
    GROUP_ROWS,
    NUM_WS,
    TINY_GOAE_ENCODER_CONFIG,
    GOAEncoder,
    GOAEncoderConfig,
    active_row_count,
    build_goae_encoder,
    load_backbone_weights,
    load_goae_encoder,
    map_goae_encoder_state_dict,
    microsoft_swinv2_key_to_timm,
    progressive_stage_for_step,
    unwrap_encoder_state_dict,
)
from networks.encoders.goae_checkpoint import load_goae_state_into
from tolerances import assert_close_roundoff

DATA = Path(__file__).parent / "data"
MANIFEST_PATH = DATA / "goae_encoder_keys.json"
TINY_REFERENCE_PATH = DATA / "goae_swin_tiny_reference.pt"

# Roundings on the longest path of the recorded reference (embed 4..32 channels, 6 Swin blocks, 4x4
# windows): patch embedding (48) + 6 blocks x (LN + qkv + attention over 16 tokens + proj + MLP 4C,
# about 270) + 3 merges (128): about 2,000.
SWIN_REFERENCE_ROUNDINGS = 2_000

TINY = GOAEncoderConfig(
    image_size=64,
    embed_dim=16,
    depths=(2, 1, 1, 1),
    num_heads=(1, 2, 2, 4),
    window_size=4,
    pretrained_window_sizes=(0, 0, 0, 0),
    drop_path_rate=0.0,
    w_dim=32,
    attention_heads=2,
    attention_feedforward_dim=48,
    attention_dropout=0.1,
)


@pytest.fixture(scope="module")
def tiny_encoder() -> GOAEncoder:
    torch.manual_seed(0)
    return GOAEncoder(TINY)


@pytest.fixture(scope="module")
def full_encoder() -> GOAEncoder:
    """The one full-size (SwinV2-B, 256) construction of this file; shared, never trained."""
    torch.manual_seed(0)
    return GOAEncoder(GOAEncoderConfig()).eval()


@pytest.fixture(scope="module")
def authors_random_state() -> dict[str, torch.Tensor]:
    """Random tensors for every key/shape of the authors' encoder_FFHQ.pt (from the manifest)."""
    manifest = json.loads(MANIFEST_PATH.read_text())
    generator = torch.Generator().manual_seed(7)
    return {
        entry["key"]: torch.randn(entry["shape"], generator=generator) * 0.05 for entry in manifest["entries"]
    }


def images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- shapes


def test_output_shapes_tiny(tiny_encoder: GOAEncoder) -> None:
    output = tiny_encoder.eval()(images(2, 64), w_avg=torch.zeros(32), stage=3)
    assert output.ws.shape == (2, NUM_WS, 32)
    assert output.w0.shape == (2, 32)
    assert output.deltas.shape == (2, NUM_WS, 32)
    assert output.stage == 3
    assert torch.isfinite(output.ws).all()


def test_tiny_preset_for_the_tiny_generator() -> None:
    encoder = GOAEncoder(TINY_GOAE_ENCODER_CONFIG).eval()
    output = encoder(images(1, 64), w_avg=torch.zeros(512), stage=2)
    assert output.ws.shape == (1, NUM_WS, 512)


def test_tap_shapes_tiny(tiny_encoder: GOAEncoder) -> None:
    taps = tiny_encoder.extract_taps(images(1, 64))
    # 64 px / patch 4 = 16x16 tokens at 16 channels, then 8x8x32, 4x4x64, 2x2x128 (twice).
    assert taps.fine.shape == (1, 256, 16)
    assert taps.mid.shape == (1, 64, 32)
    assert taps.coarse.shape == (1, 16, 64)
    assert taps.query.shape == (1, 4, 128)
    assert taps.base.shape == (1, 4, 128)


def test_wrong_image_size_names_expected_shape(tiny_encoder: GOAEncoder) -> None:
    with pytest.raises(ValueError, match=r"\[N, 3, 64, 64\]"):
        tiny_encoder(images(1, 32), w_avg=torch.zeros(32), stage=0)


# ------------------------------------------------------------------------------------- w+ assembly


@pytest.mark.numerics
def test_ws_assembly_equals_closed_form(tiny_encoder: GOAEncoder) -> None:
    """Force the heads' outputs to known values; ws must be w_avg + w0 + [0 | coarse | mid | fine] by row."""
    batch, w_dim = 2, 32
    generator = torch.Generator().manual_seed(3)
    w_avg = torch.randn(w_dim, generator=generator)
    w0 = torch.randn(batch, w_dim, generator=generator)
    group_values = {
        group: torch.randn(batch, len(GROUP_ROWS[group]), w_dim, generator=generator) for group in GROUP_NAMES
    }
    hooks = [tiny_encoder.w0_channel_mlp.register_forward_hook(lambda module, args, out: w0[:, None].clone())]
    for group in GROUP_NAMES:
        hooks.append(
            tiny_encoder.cross_attention[group].register_forward_hook(
                lambda module, args, out, group=group: group_values[group].clone()
            )
        )
    try:
        for stage in range(4):
            output = tiny_encoder.eval()(images(batch, 64), w_avg=w_avg, stage=stage)
            expected_deltas = torch.zeros(batch, NUM_WS, w_dim)
            for group in GROUP_NAMES[:stage]:
                expected_deltas[:, list(GROUP_ROWS[group])] = group_values[group]
            assert torch.equal(output.w0, w0)
            assert torch.equal(output.deltas, expected_deltas)
            # Two float32 additions (rule 2 of tests/README.md): 2 roundings.
            assert_close_roundoff(output.ws, w_avg + w0[:, None] + expected_deltas, roundings=2)
            # Row 0 never gets a delta; the last fine row comes from the 7th fine query only at stage 3.
            assert_close_roundoff(output.ws[:, 0], w_avg + w0, roundings=2)
    finally:
        for hook in hooks:
            hook.remove()
    assert GROUP_ROWS == {"coarse": (1, 2, 3), "mid": (4, 5, 6), "fine": (7, 8, 9, 10, 11, 12, 13)}


# ------------------------------------------------------------------------------- progressive stages


@pytest.mark.parametrize(
    ("step", "stage"),
    [
        (0, 0),
        (9_999, 0),
        (10_000, 1),
        (19_999, 1),
        (20_000, 2),
        (29_999, 2),
        (30_000, 3),
        (30_001, 3),
        (10**7, 3),
    ],
)
def test_progressive_stage_at_default_boundaries(step: int, stage: int) -> None:
    # 30000 -> 3 is our ">=" choice; the authors' set_stage returns 2 at exactly 30000 (documented quirk).
    assert progressive_stage_for_step(step) == stage


def test_progressive_stage_custom_boundaries_and_validation() -> None:
    assert [progressive_stage_for_step(step, (0, 5, 6)) for step in (0, 4, 5, 6)] == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="strictly increasing"):
        progressive_stage_for_step(0, (10, 10, 20))
    with pytest.raises(ValueError, match="one step per group"):
        progressive_stage_for_step(0, (10, 20))
    with pytest.raises(ValueError, match="step must be >= 0"):
        progressive_stage_for_step(-1)


def test_active_row_counts() -> None:
    assert [active_row_count(stage) for stage in range(4)] == [1, 4, 7, 14]
    with pytest.raises(ValueError, match="progressive stage"):
        active_row_count(4)


def test_inactive_groups_zero_but_every_parameter_gets_a_gradient(tiny_encoder: GOAEncoder) -> None:
    """DDP needs every parameter in the graph; inactive heads must contribute exactly nothing."""
    encoder = tiny_encoder.train()
    for stage in (0, 1):
        encoder.zero_grad(set_to_none=True)
        output = encoder(images(2, 64, seed=stage), w_avg=torch.zeros(32), stage=stage)
        assert torch.count_nonzero(output.deltas[:, active_row_count(stage) :]) == 0
        (output.ws.square().mean() + output.deltas.abs().mean()).backward()
        missing = [name for name, parameter in encoder.named_parameters() if parameter.grad is None]
        assert missing == [], f"parameters without gradient at stage {stage}: {missing}"
        inactive = {id(parameter) for parameter in encoder.inactive_head_parameters(stage)}
        assert all(
            torch.count_nonzero(encoder.get_parameter(name).grad) == 0
            for name, parameter in encoder.named_parameters()
            if id(parameter) in inactive
        )
        # The w0 head and the active groups do learn.
        assert torch.count_nonzero(encoder.w0_channel_mlp[2].weight.grad) > 0
        if stage == 1:
            assert torch.count_nonzero(encoder.cross_attention["coarse"].feedforward_out.weight.grad) > 0
            assert torch.count_nonzero(encoder.kv_channel_projections["coarse"][0].weight.grad) > 0
    encoder.zero_grad(set_to_none=True)
    encoder.eval()


def test_head_parameter_groups_partition_the_heads(tiny_encoder: GOAEncoder) -> None:
    group_ids = [{id(p) for p in tiny_encoder.head_parameters(group)} for group in GROUP_NAMES]
    assert all(not (a & b) for i, a in enumerate(group_ids) for b in group_ids[i + 1 :])
    shared = {id(p) for p in tiny_encoder.backbone.parameters()} | {
        id(p)
        for module in (tiny_encoder.w0_token_mlp, tiny_encoder.w0_channel_mlp)
        for p in module.parameters()
    }
    assert set().union(*group_ids) | shared == {id(p) for p in tiny_encoder.parameters()}
    assert {id(p) for p in tiny_encoder.inactive_head_parameters(1)} == group_ids[1] | group_ids[2]
    assert tiny_encoder.inactive_head_parameters(3) == []


# ----------------------------------------------------------------------------------- taps (Swin)


@pytest.mark.numerics
def test_taps_match_authors_swin_on_tiny_reference() -> None:
    """The taps equal the authors' Microsoft-style Swin's, with its weights mapped (reference data)."""
    reference = torch.load(TINY_REFERENCE_PATH, weights_only=True)
    config = reference["config"]
    encoder = GOAEncoder(
        GOAEncoderConfig(
            image_size=config["img_size"],
            embed_dim=config["embed_dim"],
            depths=config["depths"],
            num_heads=config["num_heads"],
            window_size=config["window_size"],
            pretrained_window_sizes=config["pretrained_window_sizes"],
            drop_path_rate=0.0,
            w_dim=8,
            attention_heads=2,
            attention_feedforward_dim=8,
        )
    ).eval()
    backbone_state = {
        microsoft_swinv2_key_to_timm(key): value for key, value in reference["state_dict"].items()
    }
    encoder.backbone.load_state_dict(backbone_state, strict=True)
    # Rule 1 of tests/README.md: ours in float64 (machine-independent) against the recorded float32
    # reference, whose own round-off is bounded by SWIN_REFERENCE_ROUNDINGS.
    with torch.no_grad():
        taps = encoder.double().extract_taps(reference["input"].double())
    for name, expected in reference["taps"].items():
        assert_close_roundoff(getattr(taps, name), expected.double(), SWIN_REFERENCE_ROUNDINGS, msg=f"tap {name}")


def test_full_size_tap_shapes(full_encoder: GOAEncoder) -> None:
    with torch.no_grad():
        taps = full_encoder.extract_taps(images(1, 256))
    assert taps.fine.shape == (1, 64 * 64, 128)
    assert taps.mid.shape == (1, 32 * 32, 256)
    assert taps.coarse.shape == (1, 16 * 16, 512)
    assert taps.query.shape == (1, 8 * 8, 1024)
    assert taps.base.shape == (1, 8 * 8, 1024)
    # Windows as in the authors' SwinV2-B: 16 with shift 8 at 64/32 px maps, shrunk to 16 / 8 without shift.
    windows = [
        (stage.blocks[-1].window_size, stage.blocks[-1].shift_size) for stage in full_encoder.backbone.layers
    ]
    assert windows == [((16, 16), (8, 8)), ((16, 16), (8, 8)), ((16, 16), (0, 0)), ((8, 8), (0, 0))]


# ---------------------------------------------------------------------- released checkpoint mapping


def test_manifest_is_the_authors_full_configuration() -> None:
    entries = json.loads(MANIFEST_PATH.read_text())["entries"]
    shapes = {entry["key"]: tuple(entry["shape"]) for entry in entries}
    assert len(shapes) == len(entries) == 545
    assert shapes["swin_model.patch_embed.proj.weight"] == (128, 3, 4, 4)
    assert shapes["swin_model.layers.2.blocks.17.mlp.fc1.weight"] == (2048, 512)
    assert shapes["swin_model.layers.2.downsample.reduction.weight"] == (1024, 2048)
    assert "swin_model.layers.3.downsample.reduction.weight" not in shapes
    assert shapes["mapper_mid_to_fine_spatial.2.weight"] == (4096, 2048)
    assert shapes["cross_att_fine.multihead_attn.in_proj_weight"] == (1536, 512)
    assert not any("norm1" in key and key.startswith("cross_att") for key in shapes)  # unused, affine-free


def test_released_checkpoint_maps_and_loads_strictly(
    full_encoder: GOAEncoder, authors_random_state: dict[str, torch.Tensor]
) -> None:
    mapped = map_goae_encoder_state_dict(authors_random_state)
    load_goae_state_into(full_encoder, authors_random_state, "random authors' state")  # strict, shape-checked
    ours = full_encoder.state_dict()
    assert set(mapped) == set(ours)
    # Every mapped tensor sits in the encoder unchanged (bitwise).
    assert all(torch.equal(ours[key], tensor) for key, tensor in mapped.items())
    # Spot checks of the rules, including the one-stage shift of the patch merging.
    assert torch.equal(
        ours["backbone.layers.1.downsample.reduction.weight"],
        authors_random_state["swin_model.layers.0.downsample.reduction.weight"],
    )
    assert torch.equal(
        ours["backbone.layers.3.blocks.1.attn.cpb_mlp.2.weight"],
        authors_random_state["swin_model.layers.3.blocks.1.attn.cpb_mlp.2.weight"],
    )
    assert torch.equal(
        ours["cross_attention.fine.feedforward_in.weight"],
        authors_random_state["cross_att_fine.linear1.weight"],
    )
    assert torch.equal(
        ours["kv_token_upsamplers.mid.2.bias"], authors_random_state["mapper_coarse_to_mid_spatial.2.bias"]
    )
    # Our backbone rule agrees with timm's own filter for Microsoft SwinV2 checkpoints.
    microsoft_backbone = {
        k[len("swin_model.") :]: v for k, v in authors_random_state.items() if k.startswith("swin_model.")
    }
    timm_filtered = checkpoint_filter_fn(microsoft_backbone, full_encoder.backbone)
    assert {"backbone." + key for key in timm_filtered} == {
        key for key in mapped if key.startswith("backbone.")
    }


@pytest.mark.numerics
def test_mapped_heads_compute_the_authors_formulas(
    full_encoder: GOAEncoder, authors_random_state: dict[str, torch.Tensor]
) -> None:
    """With the mapped weights, the w0 head and a cross-attention block equal a hand computation from THEIR keys."""
    load_goae_state_into(full_encoder, authors_random_state, "random authors' state")
    theirs = authors_random_state
    generator = torch.Generator().manual_seed(11)
    base = torch.randn(2, 64, 1024, generator=generator)  # [N, tokens, channels]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return functional.linear(x, theirs[f"{name}.weight"], theirs[f"{name}.bias"])

    def mlp2(x: torch.Tensor, name: str) -> torch.Tensor:
        return linear(functional.leaky_relu(linear(x, f"{name}.0"), 0.01), f"{name}.2")

    channels_first = base.transpose(1, 2)  # the authors' x_base layout [N, 1024, 64]
    expected_w0 = mlp2(
        mlp2(channels_first, "mapper_base_spatial").transpose(1, 2)
        + channels_first.amax(dim=2, keepdim=True).transpose(1, 2),
        "mapper_base_channel",
    )
    with torch.no_grad():
        from networks.encoders.goae_encoder import _rows_from_tokens

        ours_w0 = _rows_from_tokens(full_encoder.w0_token_mlp, full_encoder.w0_channel_mlp, base)
    # Two float32 paths (rule 2): token MLP (64 + 64) then channel MLP (1024 + 1024) roundings.
    assert_close_roundoff(ours_w0, expected_w0, roundings=64 + 64 + 1024 + 1024)

    queries = torch.randn(2, 3, 512, generator=generator)
    memory = torch.randn(2, 256, 512, generator=generator)
    prefix = "cross_att_coarse."
    q_weight, k_weight, v_weight = theirs[prefix + "multihead_attn.in_proj_weight"].chunk(3)
    q_bias, k_bias, v_bias = theirs[prefix + "multihead_attn.in_proj_bias"].chunk(3)
    heads, head_dim = 4, 128

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    q = split(functional.linear(queries, q_weight, q_bias))
    k = split(functional.linear(memory, k_weight, k_bias))
    v = split(functional.linear(memory, v_weight, v_bias))
    attended = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1) @ v
    attended = linear(attended.transpose(1, 2).reshape(2, 3, 512), prefix + "multihead_attn.out_proj")
    hidden = functional.layer_norm(queries + attended, (512,))  # no affine
    expected = hidden + linear(torch.relu(linear(hidden, prefix + "linear1")), prefix + "linear2")
    with torch.no_grad():
        ours = full_encoder.cross_attention["coarse"].eval()(queries, memory)
    # Rule 2: in-projection (512) + scores (128) + softmax-weighted sum (256) + out-projection (512)
    # + layer norm (512) + feed-forward (512 + its hidden width) roundings.
    hidden_width = theirs[prefix + "linear1.weight"].shape[0]
    assert_close_roundoff(ours, expected, roundings=512 + 128 + 256 + 512 + 512 + 512 + hidden_width)


def test_mapping_rejects_unknown_keys_by_name() -> None:
    with pytest.raises(KeyError, match="pose_predictor.weight"):
        map_goae_encoder_state_dict({"pose_predictor.weight": torch.zeros(1)})


def test_unwrap_strips_training_wrappers_and_prefixes() -> None:
    inner = {
        "module.mapper_base_spatial.0.weight": torch.zeros(1),
        "module.swin_model.norm.weight": torch.zeros(1),
    }
    unwrapped = unwrap_encoder_state_dict({"encoder_state_dict": inner, "opts": {}}, "test.pt")
    assert set(unwrapped) == {"mapper_base_spatial.0.weight", "swin_model.norm.weight"}


def test_missing_checkpoint_names_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=re.escape(str(tmp_path / "encoder_FFHQ.pt")) + r".*Google Drive.*GOAE"
    ):
        load_goae_encoder(tmp_path / "encoder_FFHQ.pt")


# --------------------------------------------------------------------------- ImageNet backbone weights


def test_backbone_weights_are_explicit(tmp_path: Path) -> None:
    tiny_fields = {k: v for k, v in TINY.as_dict().items()}
    assert isinstance(build_goae_encoder("random", **tiny_fields), GOAEncoder)
    with pytest.raises(FileNotFoundError, match=r"missing_swin\.pth.*backbone_weights=random"):
        build_goae_encoder(str(tmp_path / "missing_swin.pth"), **tiny_fields)


@pytest.mark.numerics
def test_microsoft_imagenet_checkpoint_loads_into_backbone(tmp_path: Path) -> None:
    """A Microsoft-format file ({'model': ...}, merges at stage ends, with a classifier) loads via timm's filter."""
    reference = torch.load(TINY_REFERENCE_PATH, weights_only=True)
    config = reference["config"]
    microsoft_state = dict(reference["state_dict"])
    microsoft_state["head.weight"] = torch.zeros(1000, 8 * config["embed_dim"])
    microsoft_state["head.bias"] = torch.zeros(1000)
    path = tmp_path / "swinv2_tiny_microsoft.pth"
    torch.save({"model": microsoft_state}, path)
    encoder = build_goae_encoder(
        str(path),
        image_size=config["img_size"],
        embed_dim=config["embed_dim"],
        depths=config["depths"],
        num_heads=config["num_heads"],
        window_size=config["window_size"],
        pretrained_window_sizes=config["pretrained_window_sizes"],
        drop_path_rate=0.0,
        w_dim=8,
        attention_heads=2,
        attention_feedforward_dim=8,
    ).eval()
    with torch.no_grad():
        taps = encoder.double().extract_taps(reference["input"].double())
    assert_close_roundoff(taps.base, reference["taps"]["base"].double(), SWIN_REFERENCE_ROUNDINGS)  # rule 1
    encoder.float()
    bad = tmp_path / "not_swin.pth"
    torch.save({"model": {"something.weight": torch.zeros(2)}}, bad)
    with pytest.raises(KeyError, match=r"not_swin\.pth.*missing"):
        load_backbone_weights(encoder, bad)
