"""Protein training speed: where one ML step and one KL step of a trpzip2 generator spend their time.

The generator is the one `benchmarks/protein.py` trains (`BoltzmannGenerator.build` picks the mixed
transform, 546 degrees of freedom with H-bond constraints; flow of 6 blocks, hidden (256, 256)), with
the batch sizes of a recipe: ``tutorial`` (``tutorials/04_protein.py:protein_stages``: ML 128; KL 64 +
ML 128) or ``cli`` (the default stages of ``openmm-bg train``: ML 256; KL 256 + 0.1 ML 256). Each part
is timed in CPU seconds of this process (``time.process_time``: what the step costs, whatever else
loads the machine) next to wall seconds, the median of ``--repeats``:

- one-off costs: the data check and build (whitening fit, coverage reference), the trainer's setup;
- ML step: flow inverse with its log-det (the NLL), backward;
- KL step: latent draw, flow forward with log-det, standardisation + mixed transform forward (with its
  log-det), energy + forces of the batch (the generator's energy, OpenMM CPU with one thread, the
  Reference platform and the torch force field), backward through the transform and flow;
- whole `Trainer` steps of each stage (what training costs per step, optimiser included).

    python benchmarks/protein_training_speed.py --data benchmarks/cache/trpzip2_hbonds_300K_md400ps.h5

Results: printed and written to ``benchmarks/results/protein_training_speed.json``. Not a CI test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time

import mdtraj
import numpy as np
import torch
from _common import RESULTS

import openmm_bg
from openmm_bg.energy import OpenMMEnergy
from openmm_bg.systems import load
from openmm_bg.training import Stage, Trainer, default_stages
from openmm_bg.training.losses import kl_loss, ml_loss

RECIPES = {"tutorial": (128, 64, 0.5), "cli": (256, 256, 0.1)}  # ML batch, KL batch, ML weight in the KL stage


def timed(fn, repeats: int) -> tuple[dict, object]:
    """``({"cpu_s", "wall_s"}, last result)``: medians over ``repeats`` calls of ``fn``."""
    cpu, wall, out = [], [], None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall)}, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="trpzip2 MD frames (H-bond constraints), e.g. from openmm-bg simulate")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="tutorial")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--output", default=str(RESULTS / "protein_training_speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    b_ml, b_kl, w_ml = RECIPES[args.recipe]
    res: dict = {"settings": vars(args), "load_average_start": os.getloadavg()}
    parts: dict = {}

    system = load("trpzip2", constraints="hbonds")
    traj = mdtraj.load(args.data)
    xyz = traj.xyz.astype(np.float64)
    parts["build"], gen = timed(lambda: openmm_bg.BoltzmannGenerator.build(system, xyz, n_blocks=6,
                                                                           hidden=(256, 256), seed=0), 1)
    res.update(n_frames=len(xyz), n_dof=gen.n_dof, transform=type(gen.transform).__name__)
    stages = [Stage("ml", steps=10 ** 6, lr=5e-4, batch_size=b_ml),
              Stage("kl", steps=10 ** 6, ml=w_ml, kl=1.0, lr=1e-4, batch_size=b_ml, kl_batch_size=b_kl)]
    if args.recipe == "cli":
        stages = [dataclasses.replace(s, steps=10 ** 6) for s in default_stages()]
    parts["trainer_setup"], trainer = timed(lambda: Trainer(gen, xyz, stages, seed=0, progress=False), 1)
    energy = gen.energy
    parts["energy_platform"] = energy.platform_name
    ref = trainer._reference()
    rng = torch.Generator().manual_seed(0)

    # ML step
    v = trainer.v_data[torch.randint(0, len(trainer.v_data), (b_ml,), generator=rng)]
    with torch.no_grad():
        parts["ml_flow_inverse_no_grad"], _ = timed(lambda: gen.flow.log_prob(v), args.repeats)

    def ml_step():
        gen.flow.zero_grad()
        loss = ml_loss(gen, v)
        c0, w0 = time.process_time(), time.perf_counter()
        loss.backward()
        return time.process_time() - c0, time.perf_counter() - w0

    parts["ml_loss_and_backward"], (c, w) = timed(ml_step, args.repeats)
    parts["ml_backward_only"] = {"cpu_s": c, "wall_s": w}

    # KL step
    t = gen.training_temperature
    z = gen.sample_latent(b_kl, rng, t)
    parts["kl_sample_latent"], _ = timed(lambda: gen.sample_latent(b_kl, rng, t), args.repeats)
    with torch.no_grad():
        parts["kl_flow_forward_no_grad"], (vv, _) = timed(lambda: gen.flow(z), args.repeats)
        y, _ = gen.standardize(vv.to(torch.float64))
        parts["kl_transform_forward_no_grad"], (x, _) = timed(lambda: gen.transform(y), args.repeats)
        parts["kl_propose_no_grad"], prop = timed(lambda: gen.propose(z=z, temperature=t), args.repeats)
    x = prop.x[prop.ok].detach()
    res["kl_valid_rows"] = int(prop.ok.sum())
    backends = {"generator_energy": energy,
                "openmm_cpu_1thread": OpenMMEnergy(system, platform="CPU", platform_properties={"Threads": "1"}),
                "openmm_reference": OpenMMEnergy(system, platform="Reference"),
                "torch_forcefield": OpenMMEnergy(system, backend="torch")}
    for name, e in backends.items():
        parts[f"kl_energy_forces_{name}"], _ = timed(lambda e=e: e.evaluate(x), args.repeats)

    def kl_step():
        gen.flow.zero_grad()
        loss, _, info = kl_loss(gen, z, t, ref, 1e3, 1e5, 0.0)
        c0, w0 = time.process_time(), time.perf_counter()
        loss.backward()
        return time.process_time() - c0, time.perf_counter() - w0

    parts["kl_loss_and_backward"], (c, w) = timed(kl_step, args.repeats)
    parts["kl_backward_only"] = {"cpu_s": c, "wall_s": w}

    # whole trainer steps of each stage
    for k, stage in enumerate(trainer.stages):
        parts[f"trainer_step_{stage.name}"], _ = timed(lambda k=k, stage=stage: trainer._step(k, stage, 0),
                                                        args.repeats)
    res["parts"] = parts
    res["load_average_end"] = os.getloadavg()
    for name, value in parts.items():
        if isinstance(value, dict):
            print(f"{name:42s} cpu {value['cpu_s']:8.3f} s   wall {value['wall_s']:8.3f} s")
        else:
            print(f"{name:42s} {value}")
    print("load average (1, 5, 15 min) at start", res["load_average_start"], "at end", res["load_average_end"])
    RESULTS.mkdir(exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(res, fh, indent=1, default=float)
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
