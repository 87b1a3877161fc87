"""Training: the generic loop (accelerate, early stopping, resumable), InfoNCE, and the three phases."""
