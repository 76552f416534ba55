"""jaxcls: train, evaluate and serve image classifiers with JAX and Flax."""

__version__ = "0.1.0"
