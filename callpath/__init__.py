"""callpath: check documented kernel call paths against what the kernel really runs."""
__version__ = "0.1.0"
