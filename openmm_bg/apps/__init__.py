"""The interface layer: the ``openmm-bg`` command line (:mod:`.cli`), the main job (:mod:`.demo`)
and plots (:mod:`.plots`). Nothing below this layer imports from it.
"""

__all__: list[str] = []
