"""Version of the openmm-bg package."""

__version__ = "0.1.0"
