"""How ``premove/`` was made: a generator and a MultiStateReporter storage written by openmm-bg at
commit 3c72f30, before the package was split into layers (``openmm_bg.mcmc`` was one module then).

Not run by the tests (``tests/test_compat.py`` reads its output). To remake the files::

    git worktree add /tmp/premove 3c72f30
    PYTHONPATH=/tmp/premove python tests/data/make_premove_storage.py tests/data/premove
    git worktree remove --force /tmp/premove

The storage records the absolute path the generator had when it was written (``MODEL_DIR`` below);
the test copies everything to a temporary folder and points the moves at the copy.
"""

MODEL_DIR = "/tmp/openmm_bg_premove"


def main(out: str) -> None:
    import shutil
    from pathlib import Path

    import numpy as np
    import openmm
    import openmm.unit as unit
    from openmmtools import cache, mcmc, states
    from openmmtools.multistate import MultiStateReporter, ReplicaExchangeSampler

    import openmm_bg
    from openmm_bg.mcmc import BoltzmannGeneratorMove, LatentMetropolisMove
    from openmm_bg.systems import load
    from openmm_bg.training import Stage, Trainer

    assert not hasattr(openmm_bg, "model"), "run this with the pre-move code (commit 3c72f30)"
    dw = load("double_well")
    data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, platform="Reference", progress=False)
    gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(8,), seed=0)
    Trainer(gen, data, [Stage("ml", 20, batch_size=64)], seed=0, progress=False).fit()
    model_dir = Path(MODEL_DIR)
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    model = model_dir / "double_well.bg"
    gen.save(model)
    move = mcmc.SequenceMove([BoltzmannGeneratorMove(gen, n_proposals=3, seed=0, model_path=model),
                              LatentMetropolisMove(gen, step_size=0.3, n_steps=2, seed=1, model_path=model)])
    thermo = [states.ThermodynamicState(dw.system, temperature=t * unit.kelvin) for t in (300.0, 450.0)]
    storage = model_dir / "rex.nc"
    reporter = MultiStateReporter(str(storage), checkpoint_interval=1)
    sampler = ReplicaExchangeSampler(mcmc_moves=move, number_of_iterations=2)
    sampler.create(thermo, states.SamplerState(dw.positions * unit.nanometer), storage=reporter)
    # the toy systems define a global parameter kT, which clashes with openmmtools' default integrator:
    # one cache for energies and moves, holding a Verlet context per state
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"), capacity=4)
    for t in thermo:
        context_cache.get_context(t, openmm.VerletIntegrator(1.0 * unit.femtosecond))
    sampler.energy_context_cache = sampler.sampler_context_cache = context_cache
    sampler.run()
    stats = [m.move_list[0].statistics for m in sampler._mcmc_moves]
    reporter.close()
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        shutil.copy(f, dest / f.name)
    (dest / "README.txt").write_text(
        "Written by tests/data/make_premove_storage.py with openmm-bg at commit 3c72f30 (pre-move layout).\n"
        f"Stored model path: {model}\nBoltzmannGeneratorMove statistics per state: {stats}\n"
        f"Positions at the end: {np.round(sampler._sampler_states[0].positions.value_in_unit(unit.nanometer), 4)}\n")
    print(stats)


if __name__ == "__main__":
    import sys

    main(sys.argv[1])
