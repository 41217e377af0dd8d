"""The model layer: `BoltzmannGenerator` (prior + flow + coordinate transform + target energy) and its
`Proposal` (:mod:`.generator`), the file format (:mod:`.fileformat`) and the fingerprint that ties a saved
model to its system (:mod:`.fingerprint`).

Examples
--------
>>> from openmm_bg.model import BoltzmannGenerator, FORMAT_VERSION
>>> FORMAT_VERSION >= 1
True
"""

from .fileformat import FORMAT_VERSION, read_model_file
from .fingerprint import ModelMismatchError, check_fingerprint, system_fingerprint
from .generator import BoltzmannGenerator, Proposal

__all__ = ["BoltzmannGenerator", "Proposal", "ModelMismatchError", "FORMAT_VERSION", "read_model_file",
           "system_fingerprint", "check_fingerprint"]
