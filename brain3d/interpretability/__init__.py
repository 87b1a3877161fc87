"""3D LIME over SLIC supervoxels, with faithfulness checks (lesion mass, deletion, randomised model)."""
