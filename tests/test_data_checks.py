"""Data that would be silently wrong are refused: atom order, units, identical frames, broken molecules."""

import time
import warnings

import mdtraj
import numpy as np
import pytest

import openmm_bg
from openmm_bg.systems import load
from openmm_bg.systems.data_checks import bond_references
from openmm_bg.systems.trajectory import TrajectoryWarning, check_trajectory


@pytest.fixture(scope="module")
def ala():
    return load("alanine_dipeptide")


@pytest.fixture(scope="module")
def md(ala):
    return openmm_bg.simulate(ala, n_frames=40, stride=50, seed=0, platform="Reference", progress=False)


def _no_warnings(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrajectoryWarning)
        return fn(*args)


def test_md_data_pass_without_warnings(ala, md, tmp_path):
    assert _no_warnings(check_trajectory, ala, md).n_frames == 40
    md.save(tmp_path / "md.dcd")
    assert _no_warnings(check_trajectory, ala, tmp_path / "md.dcd").n_frames == 40
    hbonds = load("alanine_dipeptide", constraints="hbonds", solvent="implicit")
    data = openmm_bg.simulate(hbonds, n_frames=10, stride=50, seed=0, platform="Reference", progress=False)
    _no_warnings(check_trajectory, hbonds, data)
    _, _, source = bond_references(hbonds)
    assert source.count("constraint") == 12 and source.count("force field") == 9
    # the dimer's topology bond is bistable (open/closed): it has no harmonic term and is not checked
    dimer = load("dimer_in_solvent")
    x = np.repeat(dimer.positions[None], 2, axis=0)
    x[1, 1, 0] += 0.8  # open the dimer by 0.8 nm
    _no_warnings(check_trajectory, dimer, x)


@pytest.mark.parametrize("order", ["swap_c_n", "swap_methyl_hydrogens", "shuffle"])
def test_atoms_in_another_order_are_refused_even_without_names(ala, md, tmp_path, order):
    perm = np.arange(22)
    if order == "swap_c_n":
        perm[[4, 6]] = [6, 4]  # the C and N of the first peptide bond
    elif order == "swap_methyl_hydrogens":
        perm[[1, 19]] = [19, 1]  # an H of the ACE methyl with one of the NME methyl
    else:
        perm = np.random.default_rng(1).permutation(22)
    bad = mdtraj.Trajectory(md.xyz[:, perm], ala.mdtraj_topology)
    bad.save(tmp_path / "bad.dcd")  # a DCD has no atom names: the name check cannot see the order
    for data in (tmp_path / "bad.dcd", md.xyz[:, perm]):
        with pytest.raises(ValueError, match=r"bond lengths in the data do not fit.*another order than the "
                                             r"system's topology.*Worst bonds.*ACE1|NME3|ALA2"):
            check_trajectory(ala, data)


def test_angstrom_instead_of_nm_is_refused(ala, md):
    with pytest.raises(ValueError, match=r"10\.0 times the force field's.*look like Angstrom.*divide by 10"):
        check_trajectory(ala, md.xyz * 10)
    with pytest.raises(ValueError, match=r"0\.10 times.*multiply by 10"):
        check_trajectory(ala, md.xyz / 10)
    with pytest.raises(ValueError, match="bond lengths in the data do not fit"):
        check_trajectory(ala, md.xyz * 1.3)  # any other scale is refused as well


def test_identical_frames_are_refused(ala, md):
    same = np.repeat(md.xyz[:1], 25, axis=0)
    with pytest.raises(ValueError, match="all 25 frames are identical"):
        check_trajectory(ala, same)
    noisy = same + 1e-6 * np.random.default_rng(0).standard_normal(same.shape)  # float noise only
    with pytest.raises(ValueError, match="all 25 frames are identical"):
        check_trajectory(ala, noisy)
    q = np.linalg.qr(np.random.default_rng(2).standard_normal((25, 3, 3)))[0]
    rot = q * np.sign(np.linalg.det(q))[:, None, None]  # proper rotations
    moved = np.einsum("bij,aj->bai", rot, md.xyz[0]) + np.arange(25)[:, None, None] * 0.1
    with pytest.raises(ValueError, match=r"all 25 frames are identical \(up to rigid-body motion\)"):
        check_trajectory(ala, moved)
    dw = load("double_well")
    with pytest.raises(ValueError, match="all 3 frames are identical"):
        check_trajectory(dw, np.zeros((3, 1, 3)))
    check_trajectory(ala, md.xyz[:1])  # one frame is one frame
    with pytest.warns(TrajectoryWarning, match="only 2 of 20 frames are distinct"):
        check_trajectory(ala, np.repeat(md.xyz[:2], 10, axis=0))


@pytest.mark.parametrize("fraction", [0.1, 0.6, 1.0])
def test_molecules_broken_across_a_box_are_refused(ala, md, fraction):
    x = md.xyz.copy()
    broken = np.arange(len(x))[: max(1, int(fraction * len(x)))]
    for f in broken:  # wrap the atoms right of the centre into a 2.5 nm box, as stripped PBC MD has them
        right = x[f, :, 0] > x[f, :, 0].mean()
        x[f, right, 0] -= 2.5
    with pytest.raises(ValueError, match="broken across a periodic box") as info:
        check_trajectory(ala, x)
    if fraction < 0.5:
        assert f"{len(broken)} of 40 frames have a bond off" in str(info.value)


def test_inverted_stereocentres_are_reported(ala, md):
    x = md.xyz.copy()
    x[[3, 7]] *= [-1.0, 1.0, 1.0]  # mirror two frames
    with pytest.warns(TrajectoryWarning, match=r"2 of 40 frames have an inverted stereocentre.*ALA2:CA in 2 "
                                               r"frames; frames \[3, 7\]"):
        check_trajectory(ala, x)
    with pytest.warns(TrajectoryWarning, match="40 of 40 frames .*all of them: a mirror image"):
        check_trajectory(ala, md.xyz * [1.0, 1.0, -1.0])


def test_checks_are_fast_for_thousands_of_frames():
    tz = load("trpzip2")  # 218 atoms
    x = tz.positions[None] + 0.003 * np.random.default_rng(0).standard_normal((3000, tz.n_atoms, 3))
    check_trajectory(tz, x[:2])
    start = time.perf_counter()
    _no_warnings(check_trajectory, tz, x)
    assert time.perf_counter() - start < 2.0  # ~0.3 s; the margin is for a loaded 2-core machine


# ---------------------------------------------------------------------- damaged files
def _cut(src, dst, n_bytes):
    data = src.read_bytes()
    dst.write_bytes(data[:n_bytes] if n_bytes >= 0 else data[:len(data) + n_bytes])
    return dst


@pytest.mark.parametrize("cut", [0.5, -50, -1])
def test_truncated_dcd_is_refused_with_the_frame_counts(ala, md, tmp_path, capfd, cut):
    md.save(tmp_path / "md.dcd")
    size = (tmp_path / "md.dcd").stat().st_size
    bad = _cut(tmp_path / "md.dcd", tmp_path / "cut.dcd", int(size * cut) if cut > 0 else cut)
    with pytest.raises(ValueError, match=r"cut.dcd is damaged or incomplete: it says it holds 40 frames but only "
                                         r"\d+ could be read.*header claims 40 frames"):
        check_trajectory(ala, bad)
    assert "dcdplugin" not in capfd.readouterr().out  # the reader's note became our message


def test_dcd_reader_notes_are_not_printed(ala, md, tmp_path, capfd):
    md.save(tmp_path / "md.dcd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_trajectory(ala, tmp_path / "md.dcd")
    out = capfd.readouterr()
    assert "dcdplugin" not in out.out + out.err


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_hdf5_gives_one_clear_line(ala, md, tmp_path, fraction):
    md.save(tmp_path / "md.h5")
    size = (tmp_path / "md.h5").stat().st_size
    bad = _cut(tmp_path / "md.h5", tmp_path / "cut.h5", int(size * fraction))
    with pytest.raises(ValueError, match=r"cut.h5 is a damaged or incomplete HDF5 file") as info:
        check_trajectory(ala, bad)
    assert "\n" not in str(info.value) and "H5F.c" not in str(info.value)


def test_frame_counts_from_headers(md, tmp_path):
    from openmm_bg.systems.trajectory_files import dcd_header_frames, hdf5_stored_frames

    md.save(tmp_path / "md.dcd")
    md.save(tmp_path / "md.h5")
    assert dcd_header_frames(tmp_path / "md.dcd") == 40 and hdf5_stored_frames(tmp_path / "md.h5") == 40
    md.save(tmp_path / "md.xtc")
    assert dcd_header_frames(tmp_path / "md.xtc") is None


def test_xtc_cut_inside_a_frame_says_what_is_complete(ala, md, tmp_path):
    md.save(tmp_path / "md.xtc")
    size = (tmp_path / "md.xtc").stat().st_size
    bad = _cut(tmp_path / "md.xtc", tmp_path / "cut.xtc", size // 2 + 17)
    with pytest.raises(ValueError, match=r"cut.xtc ends inside a frame after \d+ complete frames.*no frame count"):
        check_trajectory(ala, bad)
