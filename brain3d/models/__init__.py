"""Brain3D model: inflated SigLIP volume encoder -> K visual tokens -> projector -> Gemma 3 soft prompt."""
