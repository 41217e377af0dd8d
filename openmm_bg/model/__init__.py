"""The model layer: `BoltzmannGenerator` (prior + flow + coordinate transform + target energy), its
file format and the fingerprint that ties a saved model to its system.

Examples
--------
>>> from openmm_bg.model import BoltzmannGenerator, FORMAT_VERSION
>>> FORMAT_VERSION >= 1
True
"""

from .generator import FORMAT_VERSION, BoltzmannGenerator, ModelMismatchError, read_model_file, system_fingerprint

__all__ = ["BoltzmannGenerator", "ModelMismatchError", "FORMAT_VERSION", "read_model_file", "system_fingerprint"]
