"""webvse_model: the learning library of webvse (PyTorch + numpy; never Prefect).

encoders (the three branches), losses (VSE / VSE++ hinge ranking), metrics (exact,
vectorized R@K), data (pairs, batches, curriculum), train (both stages, resume),
inference (embedding splits), datasets (readers).
"""
