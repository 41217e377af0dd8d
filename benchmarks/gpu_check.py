"""GPU check of the torch force field: CUDA energies and forces against OpenMM Reference, and batched
energy + force throughput against the batch size, for alanine dipeptide (OBC1), trpzip2 (OBC2) and the
T4 lysozyme L99A receptor of openmmtools (2603 atoms, OBC2).

The lent GPU machine has a CUDA build of torch but no OpenMM, openmmtools, mdtraj or pymbar, and at most
64 MiB travel to it, so the check runs in two steps:

1. ``export`` (here, with OpenMM): builds each system's `TorchForceField` (float64 and float32), draws
   configurations (the system's positions plus 0.01 nm Gaussian noise), computes their energies and
   forces with an OpenMM ``Reference`` context and times the plain OpenMM CPU loop (1 thread), and
   writes one ``<system>.pt`` per system plus ``manifest.json`` (a few MB in all; refused above
   ``--max-mib``). The force fields pickle as their per-particle parameters; the pair lists are rebuilt
   on loading.
2. ``device`` (there, or anywhere with ``--device cpu``): imports only torch, numpy and the package's
   torch force field modules (``openmm_bg.energy.torchff``, loaded without the package's ``__init__``,
   which needs OpenMM), compares energies and forces on the device with the Reference values
   (relative difference per configuration, energies ``|dE| / max(|E|, 1)``, forces
   ``||dF|| / max(||F||, 1)``, both <= ``--tolerance``, default 1e-5, in float64; float32 reported) and
   measures energy + force throughput for a batch size sweep in float64 and float32, within a time
   budget. Writes JSON (``$OUT/gpu_check.json`` when ``$OUT`` is set) and exits with 1 if a check failed.

Usage::

    python benchmarks/gpu_check.py export --out benchmarks/gpu_payload/
    python benchmarks/gpu_check.py device --payload benchmarks/gpu_payload/            # CUDA
    python benchmarks/gpu_check.py device --payload benchmarks/gpu_payload/ --device cpu --batch-sizes 1 4

OpenMM's own CUDA platform cannot be timed on the lent machine (no OpenMM there); the export records the
OpenMM CPU loop for comparison. Not a CI test (``tests/test_gpu_check.py`` dry-runs both steps on a
small payload on the CPU).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # this checkout's package, also where it is not installed (the GPU machine)
    sys.path.insert(0, str(ROOT))
SYSTEMS = ("alanine_dipeptide_obc1", "trpzip2", "t4_lysozyme")
DEFAULT_BATCHES = (1, 4, 16, 64, 256, 1024, 4096, 16384)


# ----------------------------------------------------------------------------------------- export
def _load_system(name: str):
    """``(openmm.System, positions [n, 3] nm)`` of one of `SYSTEMS`."""
    if name == "alanine_dipeptide_obc1":
        from openmm_bg.systems import load

        s = load("alanine_dipeptide", solvent="implicit")
        return s.system, np.asarray(s.positions, dtype=np.float64)
    if name == "trpzip2":
        from openmm_bg.systems import load

        s = load("trpzip2")
        return s.system, np.asarray(s.positions, dtype=np.float64)
    if name == "t4_lysozyme":
        import openmm.app as app
        import openmm.unit as unit
        from openmmtools.testsystems import get_data_filename

        folder = "data/T4-lysozyme-L99A-implicit/"
        prmtop = app.AmberPrmtopFile(get_data_filename(folder + "receptor.prmtop"))
        crd = app.AmberInpcrdFile(get_data_filename(folder + "receptor-minimized.crd"))
        system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC2,
                                     constraints=app.HBonds)
        return system, np.asarray(crd.getPositions().value_in_unit(unit.nanometer), dtype=np.float64)
    raise ValueError(f"unknown system {name!r}; choose from {SYSTEMS}")


def _openmm_loop_s(system, x: np.ndarray, budget_s: float = 2.0) -> float:
    """Median seconds per energy + forces of a plain single-context loop, CPU platform with 1 thread."""
    from openmm_bg.energy.context import ContextEvaluator

    ev = ContextEvaluator(system, "CPU", {"Threads": "1"})
    ev.evaluate(x[:1])
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < 200):
        t0 = time.perf_counter()
        ev.evaluate(x[len(times) % len(x):][:1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def export(out: Path, systems: tuple[str, ...], n_configs: int, seed: int, max_mib: float) -> dict:
    """Write the payload (see the module docstring); returns the manifest."""
    import openmm

    from openmm_bg.energy.context import ContextEvaluator
    from openmm_bg.energy.torchff import TorchForceField

    if n_configs < 1:
        raise ValueError(f"--n-configs must be >= 1, got {n_configs}")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest = {"torch": torch.__version__, "openmm": openmm.__version__, "seed": seed, "noise_nm": 0.01,
                "systems": {}}
    for name in systems:
        t0 = time.perf_counter()
        system, positions = _load_system(name)
        x = positions[None] + 0.01 * rng.standard_normal((n_configs, *positions.shape))
        energies, forces = ContextEvaluator(system, "Reference").evaluate(x)  # kJ/mol, kJ/mol/nm
        payload = {"name": name, "n_atoms": int(positions.shape[0]), "positions": torch.from_numpy(x),
                   "energies": torch.from_numpy(np.asarray(energies, dtype=np.float64)),
                   "forces": torch.from_numpy(np.asarray(forces, dtype=np.float64)),
                   "forces_in_system": [type(f).__name__ for f in system.getForces()],
                   "forcefield_float64": TorchForceField(system, dtype=torch.float64),
                   "forcefield_float32": TorchForceField(system, dtype=torch.float32)}
        path = out / f"{name}.pt"
        torch.save(payload, path)
        loop_s = _openmm_loop_s(system, x)
        manifest["systems"][name] = {"file": path.name, "bytes": path.stat().st_size,
                                     "n_atoms": payload["n_atoms"], "n_configs": n_configs,
                                     "forces": payload["forces_in_system"],
                                     "openmm_cpu_1thread_s_per_conf": loop_s,
                                     "export_s": time.perf_counter() - t0}
        print(f"{name}: {payload['n_atoms']} atoms, {path.stat().st_size / 2**20:.2f} MiB, OpenMM CPU loop "
              f"{loop_s * 1e3:.2f} ms/conf", flush=True)
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file() and p.suffix == ".pt")
    manifest["total_bytes"] = total
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if total > max_mib * 2**20:
        raise SystemExit(f"payload is {total / 2**20:.1f} MiB > --max-mib {max_mib:g}: it would not travel")
    print(f"payload {total / 2**20:.2f} MiB in {out}", flush=True)
    return manifest


# ----------------------------------------------------------------------------------------- device
def import_torchff():
    """``openmm_bg.energy.torchff`` without OpenMM: where OpenMM is missing, ``openmm_bg`` and
    ``openmm_bg.energy`` are registered as bare packages (their ``__init__`` imports OpenMM), so that
    only the torch force field modules (and ``openmm_bg.constants`` / ``.geometry``) execute."""
    if "openmm_bg" not in sys.modules:
        try:
            import openmm  # noqa: F401
        except ImportError:
            for name in ("openmm_bg", "openmm_bg.energy"):
                folder = ROOT.joinpath(*name.split("."))
                spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
                spec.submodule_search_locations = [str(folder)]
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
    return importlib.import_module("openmm_bg.energy.torchff")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _relative_errors(e, f, e_ref, f_ref) -> tuple[float, float]:
    e, f = e.detach().cpu().double().numpy(), f.detach().cpu().double().numpy()
    e_ref, f_ref = e_ref.numpy(), f_ref.numpy()
    n = len(e_ref)
    rel_e = np.abs(e - e_ref) / np.maximum(np.abs(e_ref), 1.0)
    rel_f = (np.linalg.norm((f - f_ref).reshape(n, -1), axis=1)
             / np.maximum(np.linalg.norm(f_ref.reshape(n, -1), axis=1), 1.0))
    worst = lambda v: float(np.nan_to_num(v.max(), nan=np.inf))  # noqa: E731
    return worst(rel_e), worst(rel_f)


def _sweep(ff, positions: torch.Tensor, device: torch.device, batches, budget_s: float, max_call_s: float,
           pairs_per_chunk: float, repeats: int) -> list[dict]:
    """Energy + forces per second for each batch size, until the budget, a slow call or memory runs out."""
    rows = []
    n_pairs = max([t.n_pairs() for t in ff.terms] + [1])
    gen = torch.Generator(device="cpu").manual_seed(0)
    start = time.perf_counter()
    for batch in batches:
        if time.perf_counter() - start > budget_s:
            rows.append({"batch": batch, "skipped": "time budget"})
            break
        noise = 0.01 * torch.randn((batch, *positions.shape[1:]), generator=gen, dtype=torch.float64)
        x = (positions[:1] + noise).to(device=device, dtype=ff.dtype)
        ff.chunk_size = max(1, min(batch, int(pairs_per_chunk // n_pairs)))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            times = []
            for k in range(repeats + 1):  # the first call warms up (allocator, kernels)
                _sync(device)
                t0 = time.perf_counter()
                ff.energy_and_forces(x)
                _sync(device)
                if k:
                    times.append(time.perf_counter() - t0)
                if time.perf_counter() - t0 > max_call_s:
                    break
        except torch.cuda.OutOfMemoryError:
            rows.append({"batch": batch, "skipped": "out of memory", "chunk_size": ff.chunk_size})
            torch.cuda.empty_cache()
            break
        s = float(np.median(times)) if times else time.perf_counter() - t0
        row = {"batch": batch, "chunk_size": ff.chunk_size, "s_per_call": s, "conf_per_s": batch / s,
               "calls_timed": len(times)}
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
        print(f"    batch {batch:6d}: {batch / s:12,.0f} conf/s ({s * 1e3:.2f} ms per call, chunk {ff.chunk_size})",
              flush=True)
        if s > max_call_s:
            break
    return rows


def device_check(payload: Path, device: str, batches, tolerance: float, budget_s: float, max_call_s: float,
                 pairs_per_chunk: float, repeats: int, systems: tuple[str, ...] | None = None) -> dict:
    """Run the check and the sweep on ``device`` for every system of the payload; returns the report."""
    import_torchff()  # the classes the force fields unpickle into
    from openmm_bg.energy.devices import resolve_device

    dev = resolve_device(device)
    manifest = json.loads((payload / "manifest.json").read_text())
    names = [n for n in manifest["systems"] if systems is None or n in systems]
    report = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "torch": torch.__version__, "cuda": torch.version.cuda, "tolerance": tolerance,
              "openmm_cuda": "not measured: the lent machine has no OpenMM", "systems": {}}
    all_ok = True
    for name in names:
        meta = manifest["systems"][name]
        data = torch.load(payload / meta["file"], map_location="cpu", weights_only=False)
        positions = data["positions"]
        entry = {"n_atoms": meta["n_atoms"], "forces": meta["forces"],
                 "openmm_cpu_1thread_conf_per_s": 1.0 / meta["openmm_cpu_1thread_s_per_conf"], "check": {},
                 "throughput": {}}
        print(f"{name} ({meta['n_atoms']} atoms) on {dev}", flush=True)
        for dtype in ("float64", "float32"):
            ff = data[f"forcefield_{dtype}"].to(dev)
            ff.chunk_size = max(1, min(len(positions), int(pairs_per_chunk // max(
                [t.n_pairs() for t in ff.terms] + [1]))))
            e, f = ff.energy_and_forces(positions.to(dev))
            rel_e, rel_f = _relative_errors(e, f, data["energies"], data["forces"])
            ok = bool(max(rel_e, rel_f) <= tolerance)
            entry["check"][dtype] = {"max_relative_energy_error": rel_e, "max_relative_force_error": rel_f,
                                     "passed": ok if dtype == "float64" else None}
            if dtype == "float64":
                all_ok &= ok
            print(f"  {dtype}: energies {rel_e:.2e}, forces {rel_f:.2e} relative"
                  f"{'' if dtype == 'float32' else (' ok' if ok else ' FAILED')}", flush=True)
            share = budget_s / (2 * len(names))
            entry["throughput"][dtype] = _sweep(ff, positions, dev, batches, share, max_call_s, pairs_per_chunk,
                                                repeats)
            del ff
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        report["systems"][name] = entry
    report["passed"] = all_ok
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    ex = sub.add_parser("export", help="write the payload (needs OpenMM and openmmtools)")
    ex.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu_payload")
    ex.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    ex.add_argument("--n-configs", type=int, default=8, help="configurations per system with Reference values")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--max-mib", type=float, default=48.0, help="refuse a payload larger than this")
    dv = sub.add_parser("device", help="check and time on a device (needs only torch and numpy)")
    dv.add_argument("--payload", type=Path, default=ROOT / "benchmarks" / "gpu_payload")
    dv.add_argument("--device", default="cuda", help="'cuda', 'cuda:N' or 'cpu' (dry run)")
    dv.add_argument("--systems", nargs="+", default=None, help="a subset of the payload's systems")
    dv.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    dv.add_argument("--tolerance", type=float, default=1e-5, help="largest relative difference (float64)")
    dv.add_argument("--budget-s", type=float, default=300.0, help="wall time of all the sweeps together")
    dv.add_argument("--max-call-s", type=float, default=5.0, help="stop a sweep after a call this slow")
    dv.add_argument("--pairs-per-chunk", type=float, default=5e7,
                    help="batch x pair interactions evaluated at once (memory); chunk = this / pairs")
    dv.add_argument("--repeats", type=int, default=3, help="timed calls per batch size (median)")
    dv.add_argument("--out", type=Path, default=None,
                    help="JSON report (default: $OUT/gpu_check.json if $OUT is set, else <payload>/gpu_check.json)")
    args = parser.parse_args(argv)
    if args.step == "export":
        export(args.out, tuple(args.systems), args.n_configs, args.seed, args.max_mib)
        return 0
    if any(b < 1 for b in args.batch_sizes) or args.repeats < 1 or not args.tolerance > 0:
        parser.error("--batch-sizes and --repeats must be >= 1 and --tolerance > 0")
    if not (args.payload / "manifest.json").is_file():
        parser.error(f"{args.payload} holds no manifest.json: run the export step first")
    import_torchff()
    from openmm_bg.energy.devices import resolve_device

    try:
        resolve_device(args.device, "--device")
    except ValueError as err:
        parser.error(str(err))
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else args.payload) / "gpu_check.json"
    start = time.perf_counter()
    report = device_check(args.payload, args.device, args.batch_sizes, args.tolerance, args.budget_s,
                          args.max_call_s, args.pairs_per_chunk, args.repeats, args.systems)
    report["wall_s"] = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                              else str(v)) + "\n")
    print(f"{'passed' if report['passed'] else 'FAILED'}; report -> {out}", flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
