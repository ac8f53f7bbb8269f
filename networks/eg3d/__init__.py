"""Our own pure-PyTorch EG3D generator, state-dict compatible with NVIDIA's released checkpoints.

Public API (see ``generator.TriPlaneGenerator``)::

    G = TriPlaneGenerator(**kwargs)                 # same constructor kwargs as the official class
    G.neural_rendering_resolution = 128             # not in the state dict: set from checkpoint metadata
    ws = G.mapping(z, c_cond, truncation_psi=0.7, truncation_cutoff=14)       # [N, 14, 512]
    feats = G.synthesize_features(ws, until_block="b32", noise_mode="const")  # BackboneFeatures
    planes = G.synthesize_planes_from_features(ws, feats, noise_mode="const") # [N, 3, 32, 256, 256]
    planes = G.synthesize_planes(ws, noise_mode="const")
    out = G.render_planes(planes, ws, c, draws=None)   # RenderOutput (image, image_raw, image_depth, rays...)
    out = G.synthesis(ws, c, noise_mode="const", draws=None)   # SynthesisOutput (RenderOutput + planes)
    out = G(z, c, c_cond=None, truncation_psi=1.0)   # mapping + synthesis

Configurations: ``configs.GENERATOR_CONFIGS`` ('tiny', 'ffhq512-128', 'afhqcats512-128').
Checkpoints: ``checkpoint.load_generator`` (NVIDIA .pkl via a restricted unpickler, or a state dict
plus a JSON of constructor kwargs).
"""

from networks.eg3d.outputs import BackboneFeatures, RenderOutput, RendererDraws, SynthesisOutput

__all__ = ["BackboneFeatures", "RenderOutput", "RendererDraws", "SynthesisOutput"]
