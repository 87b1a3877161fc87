"""Brain3D: 3D brain MRI (FLAIR) to radiology report, reproducibly.

The library is importable without DVC or MLflow; `stages/` wires it into the DVC pipeline.
"""

__version__ = "0.1.0"
