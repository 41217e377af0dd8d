"""Shared pytest setup lives in the repository's root ``conftest.py`` (it serves ``tests/`` and the
doctests of ``openmm_bg/`` alike): fixed thread counts and the double-well fixtures ``dw``,
``dw_data`` and ``dw_gen``."""
