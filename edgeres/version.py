"""The edgeres release: one place, so modules can record it without importing the package facade."""
__version__ = "0.1.0"
