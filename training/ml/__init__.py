"""Django-free MNIST machine-learning core: data, models, training, checkpoints, preprocessing."""

__version__ = "0.1.0"
