"""Studies built on the search engine: compute-optimal sizing and resumable sweeps.

* ``lossfit``: the parametric loss law L(N, D) and its compute optimum.
* ``shapes``: model-shape rules (hidden ladder, layers from an aspect ratio, batch rule).
* ``chinchilla``: the loss-minimizing model size under a real budget, beside the ideal.
* ``sweep``: many searches from one YAML file, resumable, on Ray.
"""

from vtrain_opt.studies.lossfit import FITS, LossFit, parse_loss_fit, rule_of_thumb
from vtrain_opt.studies.shapes import ShapeRules

__all__ = ["FITS", "LossFit", "ShapeRules", "parse_loss_fit", "rule_of_thumb"]
