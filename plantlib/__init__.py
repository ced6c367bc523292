"""plantlib: train, evaluate and compare transfer-learning image classifiers."""

from plantlib.errors import PlantlibError

__version__ = "0.1.0"
__all__ = ["PlantlibError", "__version__"]
