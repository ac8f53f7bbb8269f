"""What users do with a trained encoder: meshes, orbit videos, multi-view grids and latent editing.

Modules (import the one you need; they are kept independent so that, e.g., mesh export does not
pull in scikit-learn):

* ``inversion.mesh``: density grid of a tri-plane, marching cubes, vertex colours, PLY files.
* ``inversion.views``: view renderers, camera lists and multi-view image grids.
* ``inversion.video``: the authors' orbit camera path and mp4 (GIF fallback) writing.
* ``inversion.editing``: loading edit directions, w+ edits and the F-space edit of GOAE Eq. 10.
* ``inversion.direction_fitting``: InterfaceGAN-style direction fitting with a linear SVM (also a CLI).
* ``inversion.optimisation``: PTI, pose optimisation and encoder + PTI as an Inverter (docs/pti.md);
  ``inversion.tuned_generator``: the per-image tuned generator tensors such results carry.

See docs/editing.md.
"""
