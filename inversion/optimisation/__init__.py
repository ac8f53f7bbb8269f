"""Optimisation-based and hybrid inversion: PTI, pose optimisation and encoder-initialised PTI (docs/pti.md).

* ``pti``: ``PTIInverter``, the Inverter (pivot search, then per-image pivotal tuning);
* ``pivot``: the pivot search (w or w+, PTI's schedules, noise maps, optional camera);
* ``tuning``: pivotal tuning of a private generator copy (MSE + LPIPS, early stop, locality regulariser);
* ``pose_optimisation``: the camera adjustment of Ko et al. and their pose-estimator initialiser;
* ``noise``, ``schedule``, ``progress``: the pieces they share.
"""
