"""helical-runner: run Helical cell foundation models over .h5ad datasets of any size."""

__version__ = "0.1.0"
