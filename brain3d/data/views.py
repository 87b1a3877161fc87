"""How a (D, H, W) project-convention volume is shown to models pretrained on 2D images.

Radiological display (= the voxel order SimpleITK gives for DICOM-derived LPS NIfTI, the convention of
2D medical image corpora and of Med3DVLM's loaders): D inferior->superior, rows anterior->posterior,
columns from the subject's RIGHT to LEFT. The project convention (SPEC §3) has rows posterior->anterior
and columns left->right, so the view flips H and W. One definition, used by the 3D encoder (so volumes
reach SigLIP in the orientation it was pretrained on), the slice baselines, Med3DVLM and the figures.
`mirror` is the other view: the volume mirrored across the mid-sagittal plane (the laterality flip).
"""

from __future__ import annotations

import numpy as np


def radiological(volume):
    """Flip the last two axes (H, W) of a numpy array or torch tensor: project -> radiological view."""
    if isinstance(volume, np.ndarray):
        return np.ascontiguousarray(volume[..., ::-1, ::-1])
    import torch

    return torch.flip(volume, dims=(-2, -1))


def mirror(volume):
    """Mirror a (..., D, H, W) torch tensor across the mid-sagittal plane: W (left->right) is the last axis."""
    import torch

    return torch.flip(volume, dims=(-1,))
