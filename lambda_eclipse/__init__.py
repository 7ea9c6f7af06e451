"""λ-ECLIPSE: dataset construction, prior training and generation (arXiv 2402.05195)."""

__version__ = "0.1.0"
