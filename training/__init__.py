"""Training runs and model checkpoints: the Django side of the PyTorch training job."""
