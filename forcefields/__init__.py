"""Force-field XML files shipped with openmm-bg (installed as ``openmm_bg.data.forcefields``)."""
