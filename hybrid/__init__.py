"""hybrid-qdg: domain generalization for medical images with a quantum feature-enhancement layer."""

__version__ = "0.1.0"
