"""Structures shipped with openmm-bg (installed as ``openmm_bg.data.systems``)."""
