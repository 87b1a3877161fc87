"""What LIME explains: scores of a trained Brain3D on (perturbed) volumes, batched, no sampling."""

from __future__ import annotations

import numpy as np
import torch

from brain3d.data.reports import swap_laterality
from brain3d.models.model import Brain3D


def case_scores(model: Brain3D, report: str, with_side: bool):
    """Score columns for one case: ["report"] (mean token log-likelihood of the reference report) and,
    for a lateralised report, ["side"] (its log-likelihood minus that of the left/right-swapped report:
    the log-odds of the stated side). The visual tokens of each perturbed volume are computed once."""
    names = ["report", "side"] if with_side else ["report"]
    swapped = swap_laterality(report)

    def score(volumes: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(volumes, dtype=np.float32))[:, None].to(model.device)
        with torch.no_grad():
            z = model.visual(x)
            ll = model.log_likelihood(z, [report] * len(z)).cpu().numpy()
            if not with_side:
                return ll[:, None]
            ll_swapped = model.log_likelihood(z, [swapped] * len(z)).cpu().numpy()
        return np.stack([ll, ll - ll_swapped], axis=1)

    return names, score


def randomised_copy(model: Brain3D, seed: int) -> Brain3D:
    """Sanity-check model (Adebayo et al. 2018): the same LM, with the visual encoder and the projector
    re-initialised at random. Attributions that survive this are not about the image."""
    import copy

    torch.manual_seed(seed)
    visual = copy.deepcopy(model.visual)
    for module in visual.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    with torch.no_grad():
        if model.variant == "paper":  # the reference variant's position code is fixed, not learned
            visual.encoder.pos.depth.normal_(0.0, 0.02)
            visual.encoder.pos.spatial.normal_(0.0, 0.02)
    clone = Brain3D(model.language_model, visual.width, model.prompt, visual=visual, variant=model.variant)
    with torch.no_grad():
        clone.projector.vis_scale.fill_(float(model.projector.vis_scale))
    return clone.to(model.device).eval()
