"""Checkpoint loading: NVIDIA pickles through the restricted unpickler, state dict + JSON, conversion.

Fake official pickles are built by ``helpers_persistence`` (persistence structure reproduced with a
throw-away ``torch_utils`` package that is removed before reading). Tests that build our generator
skip until ``networks.eg3d.configs`` is importable.
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from networks.eg3d.checkpoint import (
    KWARGS_FORMAT,
    CheckpointError,
    GeneratorCheckpoint,
    GeneratorMetadata,
    check_state_dict_compatible,
    load_generator,
    read_checkpoint,
    read_nvidia_pickle,
    read_pickle_restricted,
    read_state_dict_checkpoint,
    save_generator_checkpoint,
)

sys.path.insert(0, str(Path(__file__).parent))
from helpers_persistence import (  # noqa: E402
    FAKE_TOP_LEVEL_PACKAGES,
    fake_nvidia_packages,
    poisoned_nvidia_packages,
    write_fake_official_pickle,
)

from shared_files import SHARED_DIR, require_shared_file  # noqa: E402

GOLDEN_PATH = SHARED_DIR / "eg3d" / "golden_small.pt"


def _generator_available() -> bool:
    try:
        import networks.eg3d.configs  # noqa: F401
        import networks.eg3d.generator  # noqa: F401
    except ImportError:
        return False
    return True


needs_generator = pytest.mark.skipif(
    not _generator_available(), reason="networks.eg3d.configs not written yet"
)


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data = torch.load(require_shared_file("eg3d/golden_small.pt"), map_location="cpu", weights_only=True)
    return {
        "state_dict": {key: value.float() for key, value in data["state_dict"].items()},
        "generator_kwargs": data["generator_kwargs"],
        "neural_rendering_resolution": int(data["neural_rendering_resolution"]),
    }


@pytest.fixture(scope="module")
def official_pickle(golden: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("official")
    path = root / "ffhq-fake-official.pkl"
    write_fake_official_pickle(
        path, root / "fake_nvidia", golden["state_dict"], golden["generator_kwargs"],
        golden["neural_rendering_resolution"],
    )
    return path


def _assert_no_nvidia_modules_imported() -> None:
    imported = [name for name in sys.modules if name.split(".")[0] in FAKE_TOP_LEVEL_PACKAGES]
    assert imported == [], f"loader imported {imported}"
    assert not [name for name in sys.modules if name.startswith("_imported_module_")]


# ------------------------------------------------------------------------------------------------
# (a) NVIDIA pickles
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL])
def test_pickle_gives_exact_tensors_in_official_order_without_running_nvidia_code(
    golden: dict[str, Any], tmp_path: Path, protocol: int
) -> None:
    executed = tmp_path / "module_src_was_executed"
    imported = tmp_path / "nvidia_module_was_imported"
    path = tmp_path / "snapshot.pkl"
    write_fake_official_pickle(
        path, tmp_path / "fake_nvidia", golden["state_dict"], golden["generator_kwargs"], 32,
        module_src=f"open({str(executed)!r}, 'w').write('exec ran')\n", protocol=protocol,
    )
    _assert_no_nvidia_modules_imported()  # the writer cleaned up after itself

    # Importable NVIDIA-named packages that would leave a trace if the loader imported them.
    with poisoned_nvidia_packages(tmp_path / "poisoned", imported):
        record = read_nvidia_pickle(path)
        _assert_no_nvidia_modules_imported()

    assert not executed.exists(), "module_src embedded in the pickle was executed"
    assert not imported.exists(), imported.read_text()
    assert list(record.state_dict) == list(golden["state_dict"])  # names and official order
    for key, expected in golden["state_dict"].items():
        assert torch.equal(record.state_dict[key], expected), key
    assert "renderer.scratch" not in record.state_dict  # non-persistent buffer skipped
    assert record.class_name == "TriPlaneGenerator" and record.persistence_version == 6
    assert record.neural_rendering_resolution == 32
    assert record.generator_kwargs() == golden["generator_kwargs"]
    assert type(record.init_kwargs["mapping_kwargs"]) is dict  # EasyDict became a plain dict
    metadata = record.to_checkpoint().metadata
    assert metadata.source == "snapshot.pkl"
    json.dumps(metadata.to_json_dict())  # JSON-serialisable as is


def test_rendering_kwargs_attribute_wins_over_init_kwargs(golden: dict[str, Any], tmp_path: Path) -> None:
    """The live attribute is what the official model renders with; init kwargs are a deep copy."""
    kwargs = golden["generator_kwargs"]
    path = tmp_path / "snapshot.pkl"
    write_fake_official_pickle(
        path, tmp_path / "fake", {"dataset_label_std": torch.ones(25)}, kwargs, 128,
        rendering_kwargs_attribute=dict(kwargs["rendering_kwargs"], depth_resolution=99),
    )
    record = read_nvidia_pickle(path)
    assert record.init_kwargs["rendering_kwargs"]["depth_resolution"] == 12
    assert record.generator_kwargs()["rendering_kwargs"]["depth_resolution"] == 99
    assert record.neural_rendering_resolution == 128


class _RunsShell:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.sentinel}",))


class _RunsExec:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> Any:
        return (builtins.exec, (f"open({str(self.sentinel)!r}, 'w').write('x')",))


class _RunsSubprocess:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> Any:
        return (subprocess.call, (["touch", str(self.sentinel)],))


class _RunsEval:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> Any:
        return (builtins.eval, (f"open({str(self.sentinel)!r}, 'w')",))


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [(_RunsShell, "system"), (_RunsExec, "builtins.exec"), (_RunsSubprocess, "subprocess.call"),
     (_RunsEval, "builtins.eval")],
)
@pytest.mark.parametrize("placement", ["top_level", "inside_network_state"])
def test_pickle_that_tries_to_run_code_is_refused(
    tmp_path: Path, payload: type, global_name: str, placement: str
) -> None:
    sentinel = tmp_path / "side_effect_happened"
    evil = payload(sentinel)
    path = tmp_path / "evil.pkl"
    if placement == "top_level":
        path.write_bytes(pickle.dumps({"G_ema": evil}))
    else:  # hidden in a persistent network's state, the way a tampered official file would hide it
        with fake_nvidia_packages(tmp_path / "fake") as fake:
            network = fake.persistence.persistent_class("TriPlaneGenerator", "")()
            network.payload = evil
            path.write_bytes(pickle.dumps({"G_ema": network}))
    with pytest.raises(CheckpointError) as error:
        read_nvidia_pickle(path)
    message = str(error.value)
    assert str(path) in message and global_name in message and "refusing" in message
    assert not sentinel.exists()


def test_tensor_payload_that_tries_to_run_code_is_refused(tmp_path: Path) -> None:
    """torch.storage._load_from_bytes is replaced by a weights_only torch.load of the payload."""
    sentinel = tmp_path / "side_effect_happened"

    class _EvilStorage:
        def __reduce__(self) -> Any:
            return (torch.storage._load_from_bytes, (pickle.dumps(_RunsShell(sentinel), protocol=2),))

    path = tmp_path / "evil_tensor.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _EvilStorage()}))
    with pytest.raises(CheckpointError, match="refusing.*tensor payload.*system") as error:
        read_nvidia_pickle(path)
    assert str(path) in str(error.value)
    assert not sentinel.exists()


def test_unknown_class_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"G_ema": collections.Counter(a=1)}))  # an arbitrary importable class
    with pytest.raises(CheckpointError, match=r"collections\.Counter"):
        read_nvidia_pickle(path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_numpy_scalars_of_official_layers_become_python_numbers(tmp_path: Path, protocol: int) -> None:
    values = {"weight_gain": np.float64(1) / np.sqrt(512), "act_gain": np.sqrt(np.float32(2)),
              "count": np.int64(-3), "flag": np.bool_(True), "half": np.float16(1.5),
              "big_endian": np.array([0.25], dtype=">f8")[0]}
    path = tmp_path / "numbers.pkl"
    path.write_bytes(pickle.dumps(values, protocol=protocol))
    decoded = read_pickle_restricted(path)
    assert decoded == {key: value.item() for key, value in values.items()}
    assert all(type(value) in (float, int, bool) for value in decoded.values())


def test_numpy_arrays_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "array.pkl"
    path.write_bytes(pickle.dumps({"G_ema": np.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"refusing.*_reconstruct"):
        read_pickle_restricted(path)


@pytest.mark.parametrize("keep_fraction", [0.5, 0.999, 0.0001])
def test_truncated_pickle_gives_clear_error(
    official_pickle: Path, tmp_path: Path, keep_fraction: float
) -> None:
    data = official_pickle.read_bytes()
    path = tmp_path / "truncated.pkl"
    path.write_bytes(data[: max(1, int(len(data) * keep_fraction))])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        read_nvidia_pickle(path)
    assert str(path) in str(error.value)


def test_pickle_without_g_ema_is_refused(golden: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "no_gema.pkl"
    write_fake_official_pickle(path, tmp_path / "fake", {"dataset_label_std": torch.ones(25)},
                               golden["generator_kwargs"], 128, include_g_ema=False)
    with pytest.raises(CheckpointError, match="no 'G_ema'") as error:
        read_nvidia_pickle(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("name", ["ffhqrebalanced512-128.pkl", "generator.safetensors", "weights.pt"])
def test_missing_file_names_path_and_official_source(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(CheckpointError) as error:
        load_generator(path)
    message = str(error.value)
    assert str(path) in message and "no such file" in message
    assert "NGC" in message and "ffhqrebalanced512-128.pkl" in message and "afhqcats512-128.pkl" in message


# ------------------------------------------------------------------------------------------------
# (b) state dict + JSON
# ------------------------------------------------------------------------------------------------


def _small_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "dataset_label_std": torch.ones(25),
        "decoder.net.0.weight": torch.randn(4, 3, generator=generator),
    }


def _write_json(path: Path, **fields: Any) -> Path:
    data = {"generator_kwargs": {"z_dim": 8}, "neural_rendering_resolution": 16, "format": KWARGS_FORMAT}
    data.update(fields)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("wrapper", ["plain", "G_ema", "state_dict"])
def test_torch_state_dict_wrappers_and_sibling_json(tmp_path: Path, wrapper: str) -> None:
    state = _small_state_dict()
    content = state if wrapper == "plain" else {wrapper: state, "epoch": 3}
    torch.save(content, tmp_path / "weights.pt")
    _write_json(tmp_path / "generator.json")
    checkpoint = read_state_dict_checkpoint(tmp_path / "weights.pt")
    assert list(checkpoint.state_dict) == list(state)
    assert all(torch.equal(checkpoint.state_dict[key], state[key]) for key in state)
    assert checkpoint.metadata == GeneratorMetadata({"z_dim": 8}, 16, "")


def test_same_stem_json_wins_and_explicit_path_wins_over_both(tmp_path: Path) -> None:
    torch.save(_small_state_dict(), tmp_path / "model.pth")
    _write_json(tmp_path / "generator.json", neural_rendering_resolution=16)
    _write_json(tmp_path / "model.json", neural_rendering_resolution=32)
    explicit = _write_json(tmp_path / "elsewhere.json", neural_rendering_resolution=64)
    assert read_checkpoint(tmp_path / "model.pth").metadata.neural_rendering_resolution == 32
    assert read_checkpoint(tmp_path / "model.pth", explicit).metadata.neural_rendering_resolution == 64


def test_unknown_torch_file_layout_is_refused(tmp_path: Path) -> None:
    torch.save({"encoder": {"w": torch.zeros(1)}, "step": 1}, tmp_path / "goae.pt")
    _write_json(tmp_path / "generator.json")
    with pytest.raises(CheckpointError, match="not a generator state dict.*'encoder'"):
        read_checkpoint(tmp_path / "goae.pt")


def test_torch_file_that_needs_code_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "side_effect_happened"
    with (tmp_path / "evil.pt").open("wb") as handle:
        torch.save({"w": _RunsShell(sentinel)}, handle)
    with pytest.raises(CheckpointError, match="refusing.*system") as error:
        read_checkpoint(tmp_path / "evil.pt")
    assert "evil.pt" in str(error.value)
    assert not sentinel.exists()


def test_missing_json_lists_where_it_looked(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(_small_state_dict(), str(tmp_path / "weights.safetensors"))
    with pytest.raises(CheckpointError, match="no generator kwargs JSON") as error:
        read_checkpoint(tmp_path / "weights.safetensors")
    assert str(tmp_path / "weights.json") in str(error.value)
    assert str(tmp_path / "generator.json") in str(error.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("{not json", "unreadable"),
     (json.dumps({"generator_kwargs": {"z_dim": 8}}), "neural_rendering_resolution"),
     (json.dumps({"neural_rendering_resolution": 128}), "generator_kwargs"),
     (json.dumps({"generator_kwargs": {"z_dim": 8}, "neural_rendering_resolution": 128, "format": "v0"}),
      "format")],
)
def test_bad_json_is_named(tmp_path: Path, text: str, problem: str) -> None:
    torch.save(_small_state_dict(), tmp_path / "weights.pt")
    (tmp_path / "generator.json").write_text(text)
    with pytest.raises(CheckpointError, match=problem) as error:
        read_checkpoint(tmp_path / "weights.pt")
    assert str(tmp_path / "generator.json") in str(error.value)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors", ".pkl"])
def test_garbage_file_gives_clear_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"<html>404 Not Found</html>")  # a failed download saved under the expected name
    _write_json(tmp_path / "generator.json")
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        read_checkpoint(path)
    assert str(error.value).startswith(f"{path}:")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_state_dict_files_give_clear_error(tmp_path: Path, suffix: str) -> None:
    metadata = GeneratorMetadata({"z_dim": 8}, 16)
    checkpoint = GeneratorCheckpoint(tmp_path / "src", _small_state_dict(), metadata, "")
    saved = save_generator_checkpoint(checkpoint, tmp_path, "pt" if suffix == ".pt" else "safetensors")
    data = saved.weights_path.read_bytes()
    saved.weights_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as error:
        read_checkpoint(saved.weights_path)
    assert str(saved.weights_path) in str(error.value)


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    from networks.eg3d.checkpoint import _write_atomically

    target = tmp_path / "generator.json"
    target.write_text("previous")

    def write_then_fail(handle: Any) -> None:
        handle.write(b"half of the new con")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write_atomically(target, write_then_fail)
    assert target.read_text() == "previous"
    assert [path.name for path in tmp_path.iterdir()] == ["generator.json"]


def test_golden_file_reads_with_embedded_kwargs(golden: dict[str, Any]) -> None:
    checkpoint = read_checkpoint(GOLDEN_PATH)
    assert checkpoint.metadata.neural_rendering_resolution == golden["neural_rendering_resolution"]
    assert checkpoint.metadata.generator_kwargs == golden["generator_kwargs"]
    assert len(checkpoint.state_dict) == 177


def test_architecture_mismatch_lists_keys_and_shapes() -> None:
    expected = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2)}
    wrong = {"a.weight": torch.zeros(4, 5), "b.weight": torch.zeros(2), "c.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError) as error:
        check_state_dict_compatible(Path("x.pt"), wrong, expected)
    message = str(error.value)
    assert message.startswith("x.pt:")
    assert "missing keys: a.bias" in message and "unexpected keys: c.extra" in message
    assert "a.weight (file [4, 5] vs generator [4, 3])" in message
    check_state_dict_compatible(Path("x.pt"), expected, expected)  # a match raises nothing


# ------------------------------------------------------------------------------------------------
# With our generator
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_reference() -> torch.nn.Module:
    from networks.eg3d.configs import build_generator, randomize_generator_weights_

    return randomize_generator_weights_(build_generator("tiny"), seed=3).eval().requires_grad_(False)


@needs_generator
def test_golden_pickle_loads_strictly_into_our_generator(
    golden: dict[str, Any], official_pickle: Path
) -> None:
    loaded = load_generator(official_pickle)
    assert loaded.neural_rendering_resolution == 32 and not loaded.training
    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    assert list(loaded.state_dict()) == list(golden["state_dict"])
    for key, tensor in golden["state_dict"].items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


@needs_generator
def test_pickle_renders_exactly_like_the_source_generator(
    tiny_reference: torch.nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from networks.eg3d.configs import GENERATOR_CONFIGS
    from networks.eg3d.convert import main

    config = GENERATOR_CONFIGS["tiny"]
    path = tmp_path / "tiny.pkl"
    write_fake_official_pickle(
        path, tmp_path / "fake", tiny_reference.state_dict(), config["generator_kwargs"], 16
    )
    assert main([str(path), str(tmp_path / "converted")]) == 0
    assert "config: tiny (identical constructor kwargs)" in capsys.readouterr().out

    camera = torch.zeros(1, 25)
    camera[0, :16] = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]]).flatten()
    camera[0, 16:] = torch.tensor([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1])
    z = torch.randn(1, config["generator_kwargs"]["z_dim"], generator=torch.Generator().manual_seed(1))
    draws = tiny_reference.sample_draws(1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = tiny_reference.synthesis(tiny_reference.mapping(z, camera, 0.7), camera, draws=draws)
        converted = tmp_path / "converted" / "generator.safetensors"
        for loaded in (load_generator(path), load_generator(converted)):
            assert loaded.neural_rendering_resolution == 16
            actual = loaded.synthesis(loaded.mapping(z, camera, 0.7), camera, draws=draws)
            for name in ("image", "image_raw", "image_depth", "planes"):
                assert torch.equal(getattr(actual, name), getattr(expected, name)), name


@needs_generator
def test_convert_cli_round_trip_safetensors_and_pt(
    official_pickle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from networks.eg3d.convert import main

    assert main([str(official_pickle), str(tmp_path / "st")]) == 0
    summary = capsys.readouterr().out
    assert "tensors: 177" in summary and "neural rendering resolution: 32" in summary
    assert "XY, XZ, ZX" in summary
    assert main([str(official_pickle), str(tmp_path / "pt"), "--format", "pt"]) == 0

    from_safetensors = read_checkpoint(tmp_path / "st" / "generator.safetensors")
    from_pt = read_checkpoint(tmp_path / "pt" / "generator.pt")
    from_pickle = read_checkpoint(official_pickle)
    assert from_safetensors.metadata == from_pt.metadata == from_pickle.metadata
    assert sorted(from_safetensors.state_dict) == sorted(from_pickle.state_dict)  # safetensors sorts keys
    for key, tensor in from_pickle.state_dict.items():
        assert torch.equal(from_safetensors.state_dict[key], tensor), key
        assert torch.equal(from_pt.state_dict[key], tensor), key
    written = json.loads((tmp_path / "st" / "generator.json").read_text())
    assert written["format"] == KWARGS_FORMAT and written["source"] == official_pickle.name
    written_files = sorted(path.name for path in (tmp_path / "st").iterdir())
    assert written_files == ["generator.json", "generator.safetensors"]  # no temp files left
    assert load_generator(tmp_path / "st" / "generator.safetensors").neural_rendering_resolution == 32


@needs_generator
@pytest.mark.parametrize("damage", ["drop_key", "change_shape"])
def test_other_architecture_pickle_names_the_key(
    golden: dict[str, Any], tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    state = dict(golden["state_dict"])
    key = "superresolution.block1.torgb.bias"
    if damage == "drop_key":
        del state[key]
    else:
        state[key] = torch.zeros(7)
    path = tmp_path / "other.pkl"
    write_fake_official_pickle(path, tmp_path / "fake", state, golden["generator_kwargs"], 32)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")) as error:
        load_generator(path)
    assert str(path) in str(error.value)

    from networks.eg3d.convert import main

    assert main([str(path), str(tmp_path / "out")]) == 1  # the converter refuses before writing
    assert key in capsys.readouterr().err
    assert not (tmp_path / "out" / "generator.json").exists()
