"""Loading EG3D generator checkpoints without ever running code from the file.

Two on-disk formats are understood:

(a) NVIDIA's released ``.pkl`` files (``ffhqrebalanced512-128.pkl``, ``afhqcats512-128.pkl``). They are
    ordinary pickles whose networks are "persistent class" instances: each reduces to a call of
    ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta`` = {type, version,
    module_src, class_name, state}. The official loader ``exec``s ``module_src``; we never do. A
    restricted unpickler resolves only an explicit allow-list of globals, replaces NVIDIA's classes by
    inert records that just keep their ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, ...)
    and rebuilds tensors with ``torch.load(..., weights_only=True)``. ``G_ema`` is then walked like
    ``nn.Module.state_dict`` would walk it.
(b) A plain state dict (``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or ``.safetensors``)
    plus a JSON of constructor kwargs (``generator.json``, format ``goae-eg3d-v1``).

``load_generator(path)`` dispatches on the suffix and returns our ``TriPlaneGenerator`` in eval mode
with gradients off. Every failure is one ``CheckpointError`` naming the file and the problem.
``python -m networks.eg3d.convert`` turns (a) into (b).
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import re
import secrets
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

if TYPE_CHECKING:  # the generator module is imported lazily: configs.py imports this module
    from networks.eg3d.generator import TriPlaneGenerator

KWARGS_FORMAT = "goae-eg3d-v1"
KWARGS_FILENAME = "generator.json"
PICKLE_SUFFIXES = (".pkl", ".pickle")
TORCH_SUFFIXES = (".pt", ".pth")
SAFETENSORS_SUFFIXES = (".safetensors",)
WeightsFormat = Literal["safetensors", "pt"]

OFFICIAL_CHECKPOINTS_HINT = (
    "the official EG3D generators (ffhqrebalanced512-128.pkl, afhqcats512-128.pkl) are downloaded from "
    "NVIDIA NGC: https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/eg3d ; convert them with "
    "`python -m networks.eg3d.convert FILE.pkl OUT_DIR`"
)
# The official pickles are produced by torch_utils.persistence version 6; others are read but noted.
OFFICIAL_PERSISTENCE_VERSION = 6
_MAX_LISTED = 5  # how many offending keys an error message lists


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and the problem."""


class _ForbiddenGlobal(pickle.UnpicklingError):
    """Raised inside the unpickler; turned into a CheckpointError naming the file."""


# ------------------------------------------------------------------------------------------------
# Typed records
# ------------------------------------------------------------------------------------------------


@dataclass
class GeneratorMetadata:
    """What ``generator.json`` holds: how to build the generator the weights belong to."""

    generator_kwargs: dict[str, Any]
    neural_rendering_resolution: int
    source: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "generator_kwargs": self.generator_kwargs,
            "neural_rendering_resolution": self.neural_rendering_resolution,
            "source": self.source,
            "format": KWARGS_FORMAT,
        }


@dataclass
class GeneratorCheckpoint:
    """Weights plus the metadata needed to build the generator, whatever file they came from."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: GeneratorMetadata
    metadata_origin: str  # where generator_kwargs came from, for error messages


@dataclass
class NvidiaGeneratorRecord:
    """What we extract from the ``G_ema`` entry of an official pickle (no NVIDIA code involved)."""

    path: Path
    class_name: str
    persistence_version: int
    state_dict: dict[str, torch.Tensor]
    init_args: list[Any]
    init_kwargs: dict[str, Any]
    rendering_kwargs: dict[str, Any]
    neural_rendering_resolution: int

    # The official constructor's positional parameters, used when init_args is not empty.
    POSITIONAL_PARAMETERS: ClassVar[tuple[str, ...]] = (
        "z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
        "sr_num_fp16_res", "mapping_kwargs", "rendering_kwargs", "sr_kwargs",
    )

    def generator_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs: init_args named, init_kwargs, and the live ``rendering_kwargs``.

        The attribute wins over ``init_kwargs['rendering_kwargs']`` because it is what the official
        model actually renders with (persistence deep-copies the constructor arguments).
        """
        if len(self.init_args) > len(self.POSITIONAL_PARAMETERS):
            raise CheckpointError(
                f"{self.path}: G_ema has {len(self.init_args)} positional constructor arguments; "
                f"TriPlaneGenerator takes at most {len(self.POSITIONAL_PARAMETERS)}"
            )
        kwargs = dict(zip(self.POSITIONAL_PARAMETERS, self.init_args))
        kwargs.update(self.init_kwargs)
        kwargs["rendering_kwargs"] = self.rendering_kwargs
        return kwargs

    def to_checkpoint(self) -> GeneratorCheckpoint:
        metadata = GeneratorMetadata(
            generator_kwargs=self.generator_kwargs(),
            neural_rendering_resolution=self.neural_rendering_resolution,
            source=self.path.name,
        )
        return GeneratorCheckpoint(self.path, self.state_dict, metadata, metadata_origin="the pickle's G_ema")


@dataclass
class SavedGeneratorFiles:
    weights_path: Path
    kwargs_path: Path


# ------------------------------------------------------------------------------------------------
# Inert stand-ins for what the pickle refers to
# ------------------------------------------------------------------------------------------------


@dataclass
class PersistentObjectRecord:
    """Stand-in for an NVIDIA persistent-class instance: its class name and ``__dict__``, nothing run."""

    class_name: str
    version: int
    state: dict[str, Any]
    module_src_chars: int


class PickledObjectRecord:
    """Stand-in for an instance of an allowed, never-imported class (e.g. ``training.triplane.OSGDecoder``).

    Pickle creates it with ``cls.__new__(cls)`` and fills it with ``__setstate__``; we only keep the
    state. Subclasses made by ``_inert_class`` carry the original qualified name.
    """

    qualified_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObjectRecord:
        instance = super().__new__(cls)
        instance.state = {}
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # arguments are ignored on purpose
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged: dict[str, Any] = dict(state[0] or {})
            merged.update(state[1] or {})
            state = merged
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"object of class {self.qualified_name} has a non-dict state")
        self.state = state


class PickledEasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access): a plain dict is enough."""

    def __setstate__(self, state: Any) -> None:  # EasyDict has no extra state; ignore what comes
        pass


_inert_classes: dict[str, type[PickledObjectRecord]] = {}


def _inert_class(qualified_name: str) -> type[PickledObjectRecord]:
    if qualified_name not in _inert_classes:
        short_name = qualified_name.rsplit(".", 1)[-1]
        _inert_classes[qualified_name] = type(
            short_name, (PickledObjectRecord,), {"qualified_name": qualified_name}
        )
    return _inert_classes[qualified_name]


def _reconstruct_persistent_obj(meta: Any) -> PersistentObjectRecord:
    """Replaces ``torch_utils.persistence._reconstruct_persistent_obj``: keeps the state, never execs."""
    if not isinstance(meta, dict):
        raise pickle.UnpicklingError("a persistent object's metadata is not a dict")
    if meta.get("type") != "class":
        raise pickle.UnpicklingError(f"unsupported persistent object type {meta.get('type')!r}")
    class_name, state, module_src = meta.get("class_name"), meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(state, dict) or not isinstance(module_src, str):
        raise pickle.UnpicklingError("a persistent object lacks class_name, state or module_src")
    version = meta.get("version")
    return PersistentObjectRecord(
        class_name=class_name,
        version=version if isinstance(version, int) else -1,
        state=state,
        module_src_chars=len(module_src),  # the source itself is dropped, unread and unrun
    )


def _load_storage_from_bytes(data: Any) -> torch.storage.TypedStorage | torch.UntypedStorage:
    """Replaces ``torch.storage._load_from_bytes``, which calls ``torch.load(weights_only=False)``."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("tensor storage payload is not bytes")
    storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"tensor storage payload holds a {type(storage).__name__}")
    return storage


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value)


def _rebuild_tensor(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    metadata: Any = None,
) -> torch.Tensor:
    """Replaces ``torch._utils._rebuild_tensor_v2`` after checking every argument is plain data."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor built from something that is not a storage")
    if not isinstance(storage_offset, int) or not _is_int_tuple(size) or not _is_int_tuple(stride):
        raise pickle.UnpicklingError("tensor with malformed offset, size or stride")
    if backward_hooks:  # hooks are callables: a weights file has none
        raise pickle.UnpicklingError("tensor carries backward hooks")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, tuple(size), tuple(stride), False, collections.OrderedDict()
    )


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> torch.Tensor:
    """Replaces ``torch._utils._rebuild_parameter(_with_state)``: a plain tensor is all we need."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter built from something that is not a tensor")
    if backward_hooks:
        raise pickle.UnpicklingError("parameter carries backward hooks")
    return data


def _latin1_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Replaces ``_codecs.encode``, which protocol-2 pickles use to store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected use of _codecs.encode")
    return text.encode("latin1")


# NVIDIA's layers keep numpy scalars as attributes (FullyConnectedLayer.weight_gain = lr / np.sqrt(n),
# act_gain = np.sqrt(2)): decoded here from (dtype, raw bytes) with struct, numpy is never asked to.
_NUMPY_SCALAR_FORMATS = {
    "f8": "d", "f4": "f", "f2": "e", "i8": "q", "i4": "i", "i2": "h", "i1": "b",
    "u8": "Q", "u4": "I", "u2": "H", "u1": "B", "b1": "?",
}


class _NumpyDTypeRecord:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` of a plain numeric dtype, plus its byte order."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = False) -> None:
        if spec not in _NUMPY_SCALAR_FORMATS:
            raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not a plain numeric dtype")
        self.spec: str = spec
        self.byte_order = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] == ">":
            self.byte_order = ">"


def _numpy_scalar(dtype: Any, raw: Any) -> float | int | bool:
    """Replaces ``numpy.core.multiarray.scalar``: the Python number, for numeric dtypes only."""
    if not isinstance(dtype, _NumpyDTypeRecord) or not isinstance(raw, bytes):
        raise pickle.UnpicklingError("numpy scalar of an unsupported kind")
    try:
        (value,) = struct.unpack(dtype.byte_order + _NUMPY_SCALAR_FORMATS[dtype.spec], raw)
    except struct.error as exc:
        raise pickle.UnpicklingError(f"malformed numpy scalar: {exc}") from exc
    return value


# Every global a weights-only EG3D pickle may name, mapped to our stand-in or a harmless builtin.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): PickledEasyDict,
    ("dnnlib", "EasyDict"): PickledEasyDict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("numpy", "dtype"): _NumpyDTypeRecord,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # numpy 1.x, which wrote the official files
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # numpy 2.x
}

# Classes whose instances may appear but are never imported: NVIDIA's non-persistent modules
# (pickled by reference in the official files) and the torch containers/activations they use.
_INERT_CLASSES: frozenset[str] = frozenset({
    "training.triplane.OSGDecoder",
    "training.volumetric_rendering.renderer.ImportanceRenderer",
    "training.volumetric_rendering.ray_sampler.RaySampler",
    "training.volumetric_rendering.ray_marcher.MipRayMarcher2",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.ModuleDict",
    "torch.nn.modules.activation.Softplus",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.activation.LeakyReLU",
    "torch.nn.modules.activation.Sigmoid",
    "torch.nn.modules.activation.Tanh",
    "torch.nn.modules.linear.Identity",
})


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-list; everything else (os.system, exec, arbitrary classes) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if f"{module}.{name}" in _INERT_CLASSES:
            return _inert_class(f"{module}.{name}")
        raise _ForbiddenGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by EG3D pickles")


# ------------------------------------------------------------------------------------------------
# (a) NVIDIA pickles
# ------------------------------------------------------------------------------------------------


_FORBIDDEN_GLOBAL_IN_TORCH_ERROR = re.compile(r"unsupported GLOBAL ([\w.]+)", re.IGNORECASE)


def _forbidden_global_named_by(exc: BaseException) -> str | None:
    """The global that ``torch.load(weights_only=True)`` refused, if that is why it failed."""
    match = _FORBIDDEN_GLOBAL_IN_TORCH_ERROR.search(str(exc))
    return match.group(1) if match else None


def _short_reason(exc: BaseException) -> str:
    """One informative line; torch's weights-only errors bury it after a long preamble."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and index + 1 < len(lines):
            return lines[index + 1]
    return lines[0] if lines else type(exc).__name__


def _require_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file ({OFFICIAL_CHECKPOINTS_HINT})")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a regular file")


def read_pickle_restricted(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with the allow-list; never imports torch_utils/dnnlib/training, never execs."""
    path = Path(path)
    _require_file(path)
    try:
        with path.open("rb") as handle:
            return _RestrictedUnpickler(handle).load()
    except _ForbiddenGlobal as exc:
        raise CheckpointError(
            f"{path}: refusing to load: the pickle asks for the global '{exc}', which is not allowed in an "
            "EG3D weights file (it could run code); nothing from the file was executed"
        ) from None
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        # Raised by torch.load(weights_only=True) on a tensor payload.
        forbidden = _forbidden_global_named_by(exc)
        if forbidden is not None:
            raise CheckpointError(
                f"{path}: refusing to load: a tensor payload asks for the global '{forbidden}', which is not "
                "allowed in a weights file (it could run code); nothing from the file was executed"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable EG3D pickle (truncated or corrupt?): {_short_reason(exc)}"
        ) from exc
    except (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, MemoryError, UnicodeDecodeError, OverflowError) as exc:
        raise CheckpointError(
            f"{path}: not a readable EG3D pickle (truncated or corrupt?): "
            f"{type(exc).__name__}: {_short_reason(exc)}"
        ) from exc


def _module_state(node: Any, where: str, path: Path) -> dict[str, Any]:
    if isinstance(node, PersistentObjectRecord):
        state = node.state
    elif isinstance(node, PickledObjectRecord):
        state = node.state
    else:
        raise CheckpointError(
            f"{path}: '{where or 'G_ema'}' is a {type(node).__name__}, not a network module"
        )
    for required in ("_parameters", "_buffers", "_modules"):
        if not isinstance(state.get(required), dict):
            raise CheckpointError(f"{path}: '{where or 'G_ema'}' has no {required}: not a torch module")
    return state


def _collect_state_dict(node: Any, prefix: str, out: dict[str, torch.Tensor], path: Path) -> None:
    """Same order and names as ``nn.Module.state_dict``: own parameters, own persistent buffers, children."""
    state = _module_state(node, prefix.rstrip("."), path)
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    named_tensors = list(state["_parameters"].items()) + [
        (name, tensor) for name, tensor in state["_buffers"].items() if name not in non_persistent
    ]
    for name, tensor in named_tensors:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: '{prefix}{name}' is a {type(tensor).__name__}, not a tensor")
        out[prefix + name] = tensor.detach()
    for name, child in state["_modules"].items():
        if child is not None:
            _collect_state_dict(child, f"{prefix}{name}.", out, path)


def _plain_data(value: Any, where: str, path: Path) -> Any:
    """EasyDicts/tuples -> JSON-compatible dicts/lists; anything else (tensors, objects) is an error."""
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise CheckpointError(f"{path}: {where} has non-string keys")
        return {key: _plain_data(item, f"{where}.{key}", path) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_data(item, f"{where}[{index}]", path) for index, item in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise CheckpointError(f"{path}: {where} holds a {type(value).__name__}, expected plain data")


def read_nvidia_pickle(path: str | os.PathLike[str]) -> NvidiaGeneratorRecord:
    """Extract ``G_ema``'s tensors and constructor metadata from an official EG3D ``.pkl``."""
    path = Path(path)
    data = read_pickle_restricted(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: top level is a {type(data).__name__}, expected the dict of G/D/G_ema")
    if "G_ema" not in data:
        raise CheckpointError(
            f"{path}: no 'G_ema' entry (found: {sorted(map(str, data))}); an EG3D training snapshot has one"
        )
    generator = data["G_ema"]
    if not isinstance(generator, PersistentObjectRecord):
        raise CheckpointError(f"{path}: 'G_ema' is not a persistent network object")
    if generator.class_name != "TriPlaneGenerator":
        raise CheckpointError(f"{path}: 'G_ema' is a {generator.class_name}, expected TriPlaneGenerator")
    state = generator.state
    state_dict: dict[str, torch.Tensor] = collections.OrderedDict()
    _collect_state_dict(generator, "", state_dict, path)

    resolution = state.get("neural_rendering_resolution")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0:
        raise CheckpointError(
            f"{path}: G_ema has no valid neural_rendering_resolution (found {resolution!r})"
        )
    init_kwargs = _plain_data(state.get("_init_kwargs", {}), "G_ema.init_kwargs", path)
    init_args = _plain_data(list(state.get("_init_args", ())), "G_ema.init_args", path)
    rendering_kwargs = state.get("rendering_kwargs", init_kwargs.get("rendering_kwargs"))
    if not isinstance(rendering_kwargs, dict):
        raise CheckpointError(f"{path}: G_ema has no rendering_kwargs")
    return NvidiaGeneratorRecord(
        path=path,
        class_name=generator.class_name,
        persistence_version=generator.version,
        state_dict=state_dict,
        init_args=init_args,
        init_kwargs=init_kwargs,
        rendering_kwargs=_plain_data(rendering_kwargs, "G_ema.rendering_kwargs", path),
        neural_rendering_resolution=resolution,
    )


# ------------------------------------------------------------------------------------------------
# (b) state dict + generator.json
# ------------------------------------------------------------------------------------------------


def parse_generator_metadata(data: Any, origin: str) -> GeneratorMetadata:
    """Validate a ``generator.json``-shaped dict; ``origin`` names it in errors."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{origin}: expected a JSON object with generator_kwargs")
    if "format" in data and data["format"] != KWARGS_FORMAT:
        raise CheckpointError(f"{origin}: format {data['format']!r} is not {KWARGS_FORMAT!r}")
    kwargs = data.get("generator_kwargs")
    if not isinstance(kwargs, dict) or not kwargs:
        raise CheckpointError(f"{origin}: 'generator_kwargs' (the constructor kwargs) is missing or empty")
    resolution = data.get("neural_rendering_resolution")
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution <= 0:
        raise CheckpointError(
            f"{origin}: 'neural_rendering_resolution' is missing or invalid ({resolution!r}); it is not in "
            "the state dict and must be given (128 for the released -128 models)"
        )
    source = data.get("source", "")
    return GeneratorMetadata(dict(kwargs), resolution, source if isinstance(source, str) else str(source))


def read_generator_json(path: str | os.PathLike[str]) -> GeneratorMetadata:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: generator kwargs JSON not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable generator kwargs JSON: {exc}") from exc
    return parse_generator_metadata(data, str(path))


def kwargs_json_candidates(weights_path: Path) -> list[Path]:
    """Where the kwargs JSON is looked for: same stem as the weights, then generator.json beside them."""
    same_stem = weights_path.with_suffix(".json")
    beside = weights_path.parent / KWARGS_FILENAME
    return [same_stem] if same_stem == beside else [same_stem, beside]


def _only_tensors(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(key, str) and isinstance(tensor, torch.Tensor) for key, tensor in value.items()
    )


@dataclass
class _TorchFileContents:
    state_dict: dict[str, torch.Tensor]
    embedded_metadata: Any = field(default=None)  # {'generator_kwargs', 'neural_rendering_resolution'} if any


def _unwrap_torch_file(path: Path, loaded: Any) -> _TorchFileContents:
    """Accept a plain state dict, {'G_ema': sd} or {'state_dict': sd} (+ optional embedded kwargs)."""
    if _only_tensors(loaded):
        return _TorchFileContents(dict(loaded))
    if isinstance(loaded, dict):
        for wrapper_key in ("G_ema", "state_dict"):
            if _only_tensors(loaded.get(wrapper_key)):
                embedded = None
                if "generator_kwargs" in loaded:  # self-describing files such as golden_small.pt
                    embedded = {
                        "generator_kwargs": loaded["generator_kwargs"],
                        "neural_rendering_resolution": loaded.get("neural_rendering_resolution"),
                    }
                return _TorchFileContents(dict(loaded[wrapper_key]), embedded)
        keys = sorted(map(str, loaded))[:10]
        raise CheckpointError(
            f"{path}: not a generator state dict: expected tensors by name, or a dict with 'G_ema' or "
            f"'state_dict' holding them; found keys {keys}"
        )
    raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, expected a generator state dict")


def _read_torch_file(path: Path) -> _TorchFileContents:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        forbidden = _forbidden_global_named_by(exc)
        if forbidden is not None:
            raise CheckpointError(
                f"{path}: refusing to load: the file asks for the global '{forbidden}', which is not allowed "
                "in a weights file (torch.load weights_only=True); nothing from the file was executed"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable torch file (truncated or corrupt?): {_short_reason(exc)}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable torch file (truncated or corrupt?): {_short_reason(exc)}"
        ) from exc
    return _unwrap_torch_file(path, loaded)


def _read_safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {_short_reason(exc)}"
        ) from exc


def read_state_dict_checkpoint(
    path: str | os.PathLike[str], kwargs_path: str | os.PathLike[str] | None = None
) -> GeneratorCheckpoint:
    """Read a ``.pt``/``.pth``/``.safetensors`` state dict and its kwargs JSON.

    The JSON is ``kwargs_path`` if given, else ``<stem>.json`` or ``generator.json`` beside the weights,
    else kwargs embedded in a ``.pt`` wrapper (``generator_kwargs`` + ``neural_rendering_resolution``).
    """
    path = Path(path)
    _require_file(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        contents = _TorchFileContents(_read_safetensors_file(path))
    else:
        contents = _read_torch_file(path)

    if kwargs_path is not None:
        metadata, origin = read_generator_json(kwargs_path), str(kwargs_path)
    else:
        found = [candidate for candidate in kwargs_json_candidates(path) if candidate.is_file()]
        if found:
            metadata, origin = read_generator_json(found[0]), str(found[0])
        elif contents.embedded_metadata is not None:
            origin = f"{path} (embedded generator_kwargs)"
            metadata = parse_generator_metadata(contents.embedded_metadata, origin)
        else:
            looked = ", ".join(str(candidate) for candidate in kwargs_json_candidates(path))
            raise CheckpointError(
                f"{path}: no generator kwargs JSON (looked for {looked}); pass kwargs_path= or convert the "
                "official .pkl, which writes generator.json next to the weights"
            )
    return GeneratorCheckpoint(path, contents.state_dict, metadata, metadata_origin=origin)


def read_checkpoint(
    path: str | os.PathLike[str], kwargs_path: str | os.PathLike[str] | None = None
) -> GeneratorCheckpoint:
    """Weights + metadata from any supported file, dispatched on the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        if kwargs_path is not None:
            raise CheckpointError(
                f"{path}: a .pkl carries its own constructor kwargs; do not pass kwargs_path"
            )
        return read_nvidia_pickle(path).to_checkpoint()
    if suffix in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES:
        return read_state_dict_checkpoint(path, kwargs_path)
    _require_file(path)
    raise CheckpointError(
        f"{path}: unknown checkpoint type '{suffix}' (expected .pkl, .pt, .pth or .safetensors)"
    )


# ------------------------------------------------------------------------------------------------
# Building the generator
# ------------------------------------------------------------------------------------------------


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > _MAX_LISTED else shown


def check_state_dict_compatible(
    path: Path, state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> None:
    """Raise one CheckpointError listing the first missing/unexpected keys and shape mismatches."""
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} (file {list(state_dict[key].shape)} vs generator {list(expected[key].shape)})"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listed(mismatched)}")
    if problems:
        raise CheckpointError(
            f"{path}: weights do not fit an EG3D TriPlaneGenerator with these constructor kwargs "
            f"(other architecture or wrong kwargs JSON?): {'; '.join(problems)}"
        )


def build_generator_from_checkpoint(
    checkpoint: GeneratorCheckpoint, map_location: str | torch.device = "cpu"
) -> TriPlaneGenerator:
    """Our generator from the checkpoint's kwargs, loaded strictly, eval mode, gradients off."""
    from networks.eg3d.configs import build_generator  # lazy: configs imports this module

    metadata = checkpoint.metadata
    try:
        generator = build_generator(
            dict(metadata.generator_kwargs), neural_rendering_resolution=metadata.neural_rendering_resolution
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{checkpoint.path}: cannot build the generator from the constructor kwargs in "
            f"{checkpoint.metadata_origin}: {type(exc).__name__}: {exc}"
        ) from exc
    check_state_dict_compatible(checkpoint.path, checkpoint.state_dict, generator.state_dict())
    generator.load_state_dict(checkpoint.state_dict, strict=True)
    # A plain attribute in the official model, not in the state dict: set it from the metadata.
    generator.neural_rendering_resolution = metadata.neural_rendering_resolution
    generator.eval().requires_grad_(False)
    return generator.to(map_location)


def load_generator(
    path: str | os.PathLike[str],
    kwargs_path: str | os.PathLike[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> TriPlaneGenerator:
    """Load an EG3D generator from ``.pkl`` (official), ``.pt``/``.pth`` or ``.safetensors`` (+ JSON)."""
    return build_generator_from_checkpoint(read_checkpoint(path, kwargs_path), map_location)


# ------------------------------------------------------------------------------------------------
# Writing (used by convert.py)
# ------------------------------------------------------------------------------------------------


def _write_atomically(target: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Temp file in the same folder, fsync, os.replace: readers never see a half-written file."""
    temp_path = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    # os.open with 0o666 lets the umask decide the mode, as for any normally written file.
    descriptor = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    try:  # persist the rename itself; not possible on every platform
        directory = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def save_generator_checkpoint(
    checkpoint: GeneratorCheckpoint,
    out_dir: str | os.PathLike[str],
    weights_format: WeightsFormat = "safetensors",
) -> SavedGeneratorFiles:
    """Write ``generator.safetensors`` (or ``generator.pt``) and ``generator.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Own contiguous copies: safetensors refuses shared or strided storage.
    tensors = {
        key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in checkpoint.state_dict.items()
    }
    if weights_format == "safetensors":
        from safetensors.torch import save as safetensors_bytes

        weights_path = out_dir / "generator.safetensors"
        payload = safetensors_bytes(tensors, metadata={"format": KWARGS_FORMAT})
        _write_atomically(weights_path, lambda handle: handle.write(payload))
    elif weights_format == "pt":
        weights_path = out_dir / "generator.pt"
        _write_atomically(weights_path, lambda handle: torch.save(tensors, handle))
    else:
        raise ValueError(f"unknown weights format {weights_format!r} (expected 'safetensors' or 'pt')")
    kwargs_path = out_dir / KWARGS_FILENAME
    text = json.dumps(checkpoint.metadata.to_json_dict(), indent=2, sort_keys=False) + "\n"
    _write_atomically(kwargs_path, lambda handle: handle.write(text.encode("utf-8")))
    return SavedGeneratorFiles(weights_path, kwargs_path)
