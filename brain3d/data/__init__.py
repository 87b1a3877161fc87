"""Cohorts (phantom and real), validated NIfTI loading, preprocessing and the subject-level split."""
