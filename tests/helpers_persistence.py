"""Build fake NVIDIA EG3D pickles that reproduce the persistence structure, for loader tests.

An official ``.pkl`` is a dict {G, D, G_ema, training_set_kwargs, augment_pipe}. Each network object
of a decorated class pickles as a call ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with meta = {type 'class', version 6, module_src, class_name, state = the module's __dict__}; NVIDIA's
undecorated modules (OSGDecoder, ImportanceRenderer, RaySampler, MipRayMarcher2) and torch containers
pickle by class reference; tensors use torch's own reducers.

To write such a pickle, ``fake_nvidia_packages`` puts a throw-away ``torch_utils``/``dnnlib``/
``training`` package (a few lines of our own, below) on ``sys.path``, and removes it again from
``sys.path`` and ``sys.modules`` on exit, so a later load cannot import it. ``poisoned_nvidia_packages``
puts importable packages that create a sentinel file when imported: loading with them on the path
proves the loader never imports NVIDIA's modules.
"""

from __future__ import annotations

import pickle
import re
import sys
import textwrap
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

FAKE_TOP_LEVEL_PACKAGES = ("torch_utils", "dnnlib", "training")

_EMPTY_MODULE_CLASS = "import torch\n\n\nclass {name}(torch.nn.Module):\n    pass\n"

_FAKE_SOURCES = {
    "torch_utils/__init__.py": "",
    "torch_utils/persistence.py": '''
        import torch

        def _reconstruct_persistent_obj(meta):
            raise RuntimeError("the fake persistence module is only for writing pickles")

        class PersistentModule(torch.nn.Module):
            """Pickles the way NVIDIA's decorated classes do: a call of _reconstruct_persistent_obj(meta)."""

            persisted_class_name = "?"
            persisted_module_src = ""

            def __reduce__(self):
                meta = dict(type="class", version=6, module_src=type(self).persisted_module_src,
                            class_name=type(self).persisted_class_name, state=dict(self.__dict__))
                return (_reconstruct_persistent_obj, (meta,))

        def persistent_class(class_name, module_src):
            attributes = {"persisted_class_name": class_name, "persisted_module_src": module_src}
            return type(class_name, (PersistentModule,), attributes)
    ''',
    "dnnlib/__init__.py": "from .util import EasyDict\n",
    "dnnlib/util.py": '''
        class EasyDict(dict):
            def __getattr__(self, name):
                try:
                    return self[name]
                except KeyError:
                    raise AttributeError(name)

            def __setattr__(self, name, value):
                self[name] = value
    ''',
    "training/__init__.py": "",
    "training/triplane.py": _EMPTY_MODULE_CLASS.format(name="OSGDecoder"),
    "training/volumetric_rendering/__init__.py": "",
    "training/volumetric_rendering/renderer.py": _EMPTY_MODULE_CLASS.format(name="ImportanceRenderer"),
    "training/volumetric_rendering/ray_sampler.py": _EMPTY_MODULE_CLASS.format(name="RaySampler"),
    "training/volumetric_rendering/ray_marcher.py": _EMPTY_MODULE_CLASS.format(name="MipRayMarcher2"),
}

# Buffers of the official generator (everything else in its state dict is a parameter).
BUFFER_NAMES = frozenset({"dataset_label_std", "w_avg", "resample_filter", "noise_const"})


def _forget_fake_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_TOP_LEVEL_PACKAGES:
            del sys.modules[name]


def _write_package(root: Path, sources: Mapping[str, str]) -> None:
    for relative, source in sources.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(source).lstrip("\n"))


@dataclass
class FakeNvidiaModules:
    persistence: ModuleType
    easy_dict: type
    osg_decoder: type
    importance_renderer: type
    ray_sampler: type
    mip_ray_marcher: type


@contextmanager
def fake_nvidia_packages(root: Path) -> Iterator[FakeNvidiaModules]:
    """Importable fake NVIDIA packages while inside the block; gone from sys.path/sys.modules after."""
    _write_package(root, _FAKE_SOURCES)
    sys.path.insert(0, str(root))
    try:
        import dnnlib.util
        import torch_utils.persistence
        import training.triplane
        import training.volumetric_rendering.ray_marcher
        import training.volumetric_rendering.ray_sampler
        import training.volumetric_rendering.renderer

        yield FakeNvidiaModules(
            persistence=torch_utils.persistence,
            easy_dict=dnnlib.util.EasyDict,
            osg_decoder=training.triplane.OSGDecoder,
            importance_renderer=training.volumetric_rendering.renderer.ImportanceRenderer,
            ray_sampler=training.volumetric_rendering.ray_sampler.RaySampler,
            mip_ray_marcher=training.volumetric_rendering.ray_marcher.MipRayMarcher2,
        )
    finally:
        sys.path.remove(str(root))
        _forget_fake_modules()


@contextmanager
def poisoned_nvidia_packages(root: Path, sentinel: Path) -> Iterator[None]:
    """Importable torch_utils/dnnlib/training whose import writes ``sentinel``."""
    poison = f"open({str(sentinel)!r}, 'a').write(__name__ + ' imported\\n')\n"
    _write_package(root, {
        "torch_utils/__init__.py": poison,
        "torch_utils/persistence.py": poison,
        "dnnlib/__init__.py": poison,
        "dnnlib/util.py": poison,
        "training/__init__.py": poison,
        "training/triplane.py": poison,
    })
    _forget_fake_modules()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        _forget_fake_modules()


def _persistent_class_name(module_path: str) -> str:
    """A plausible official class name for a module path (only the root's name matters to the loader)."""
    leaf = module_path.rsplit(".", 1)[-1]
    if leaf == "backbone":
        return "Generator"
    if leaf == "synthesis":
        return "SynthesisNetwork"
    if leaf == "mapping":
        return "MappingNetwork"
    if leaf == "superresolution":
        return "SuperresolutionHybrid8XDC"
    if leaf == "block0":
        return "SynthesisBlockNoUp"
    if re.fullmatch(r"b\d+|block\d+", leaf):
        return "SynthesisBlock"
    if leaf in ("conv0", "conv1"):
        return "SynthesisLayer"
    if leaf == "torgb":
        return "ToRGBLayer"
    return "FullyConnectedLayer"


def build_fake_official_generator(
    fake: FakeNvidiaModules,
    state_dict: Mapping[str, torch.Tensor],
    generator_kwargs: Mapping[str, Any],
    neural_rendering_resolution: int,
    module_src: str,
    rendering_kwargs_attribute: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """A module tree that pickles like the official ``G_ema`` and whose state_dict is ``state_dict``."""

    def persistent(class_name: str) -> torch.nn.Module:
        module = fake.persistence.persistent_class(class_name, module_src)()
        module._init_args = ()
        module._init_kwargs = fake.easy_dict()
        return module

    root = persistent("TriPlaneGenerator")
    renderer = fake.importance_renderer()
    renderer.add_module("ray_marcher", fake.mip_ray_marcher())
    renderer.plane_axes = torch.eye(3).repeat(3, 1, 1)  # a plain tensor attribute, not state
    renderer.register_buffer("scratch", torch.zeros(2), persistent=False)  # must not become a key
    root.add_module("renderer", renderer)
    root.add_module("ray_sampler", fake.ray_sampler())

    modules: dict[str, torch.nn.Module] = {"": root}

    def module_at(path: str) -> torch.nn.Module:
        if path in modules:
            return modules[path]
        parent_path, _, name = path.rpartition(".")
        parent = module_at(parent_path)
        if path == "decoder":
            child: torch.nn.Module = fake.osg_decoder()
        elif path == "decoder.net":
            child = torch.nn.Sequential(
                persistent("FullyConnectedLayer"), torch.nn.Softplus(), persistent("FullyConnectedLayer")
            )
            for index, layer in enumerate(child):
                modules[f"decoder.net.{index}"] = layer
        else:
            child = persistent(_persistent_class_name(path))
            # Official layers keep numpy scalars as attributes (weight_gain, act_gain).
            child.weight_gain = np.float64(1.0) / np.sqrt(np.float64(512))
            child.act_gain = np.sqrt(np.float32(2))
            child.activation = "lrelu"
        parent.add_module(name, child)
        modules[path] = child
        return child

    for key, tensor in state_dict.items():
        module_path, _, name = key.rpartition(".")
        module = module_at(module_path)
        value = tensor.detach().float().clone()
        if name in BUFFER_NAMES:
            module.register_buffer(name, value)
        else:
            module.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))

    kwargs = fake.easy_dict({
        key: fake.easy_dict(value) if isinstance(value, dict) else value
        for key, value in generator_kwargs.items()
    })
    root._init_kwargs = kwargs
    # The live attribute; the official code keeps it apart from the deep-copied init kwargs.
    root.rendering_kwargs = dict(rendering_kwargs_attribute or generator_kwargs["rendering_kwargs"])
    root.neural_rendering_resolution = neural_rendering_resolution
    root._last_planes = None
    root.z_dim = generator_kwargs.get("z_dim")
    return root


def write_fake_official_pickle(
    path: Path,
    package_root: Path,
    state_dict: Mapping[str, torch.Tensor],
    generator_kwargs: Mapping[str, Any],
    neural_rendering_resolution: int,
    module_src: str = "# module source of the official networks (never executed)\n",
    protocol: int = pickle.DEFAULT_PROTOCOL,
    include_g_ema: bool = True,
    rendering_kwargs_attribute: Mapping[str, Any] | None = None,
) -> None:
    """Write a training snapshot {G, D, G_ema, training_set_kwargs, augment_pipe} like NVIDIA's."""
    with fake_nvidia_packages(package_root) as fake:
        g_ema = build_fake_official_generator(
            fake, state_dict, generator_kwargs, neural_rendering_resolution, module_src,
            rendering_kwargs_attribute,
        )
        discriminator = fake.persistence.persistent_class("DualDiscriminator", module_src)()
        discriminator.register_parameter("weight", torch.nn.Parameter(torch.randn(4, 3), requires_grad=False))
        snapshot: dict[str, Any] = {
            "training_set_kwargs": fake.easy_dict(class_name="training.dataset.ImageFolderDataset",
                                                  path="ffhq.zip", use_labels=True, resolution=512),
            "G": g_ema if include_g_ema else discriminator,
            "D": discriminator,
            "augment_pipe": None,
        }
        if include_g_ema:
            snapshot["G_ema"] = g_ema
        with path.open("wb") as handle:
            pickle.dump(snapshot, handle, protocol=protocol)
