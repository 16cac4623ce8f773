"""The `dro-rebel weights` subcommand: worst-case weights of losses read from a file (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

from dro_rebel import robust_weights
from dro_rebel.cli import main

LOSSES = np.array([0.5, 2.0, 1.0, 3.0])


def test_weights_printed_from_csv(tmp_path, capsys):
    path = tmp_path / "losses.csv"
    path.write_text("\n".join(map(str, LOSSES)))
    assert main(["weights", str(path), "--ambiguity", "kl", "--radius", "0.1"]) == 0
    printed = np.array([float(line) for line in capsys.readouterr().out.split()])
    np.testing.assert_array_equal(printed, robust_weights(LOSSES, "kl", radius=0.1))


def test_weights_written_to_npy_with_groups(tmp_path):
    np.save(tmp_path / "losses.npy", LOSSES)
    np.savetxt(tmp_path / "groups.csv", [0, 0, 1, 1])
    out = tmp_path / "w.npy"
    argv = [
        "weights",
        str(tmp_path / "losses.npy"),
        "--alpha",
        "0.5",
        "-a",
        "cvar",
        "--groups",
        str(tmp_path / "groups.csv"),
    ]
    assert main(argv + ["-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), robust_weights(LOSSES, "cvar", alpha=0.5, groups=[0, 0, 1, 1]))


def test_weights_wasserstein_on_features(tmp_path, capsys):
    np.savetxt(tmp_path / "losses.csv", LOSSES)
    features = np.array([[0.0], [1.0], [2.0], [3.5]])
    np.savetxt(tmp_path / "features.csv", features, delimiter=",")
    argv = ["weights", str(tmp_path / "losses.csv"), "-a", "wasserstein", "-r", "0.5"]
    assert main(argv + ["--features", str(tmp_path / "features.csv")]) == 0
    printed = np.array([float(line) for line in capsys.readouterr().out.split()])
    np.testing.assert_array_equal(printed, robust_weights(LOSSES, "wasserstein", radius=0.5, features=features))


def test_weights_needs_exactly_one_size(tmp_path):
    np.save(tmp_path / "losses.npy", LOSSES)
    with pytest.raises(SystemExit):
        main(["weights", str(tmp_path / "losses.npy"), "--radius", "0.1", "--penalty", "1.0"])


@pytest.mark.parametrize("ambiguity", ["chi2", "kl"])
def test_calibrated_radius(tmp_path, capsys, ambiguity):
    np.save(tmp_path / "losses.npy", LOSSES)
    argv = ["weights", str(tmp_path / "losses.npy"), "-a", ambiguity, "-r", "calibrated", "--confidence", "0.9"]
    assert main(argv) == 0
    printed = np.array([float(line) for line in capsys.readouterr().out.split()])
    np.testing.assert_array_equal(printed, robust_weights(LOSSES, ambiguity, radius="calibrated", confidence=0.9))


def test_a_radius_is_a_number_or_calibrated(tmp_path, capsys):
    np.save(tmp_path / "losses.npy", LOSSES)
    with pytest.raises(SystemExit) as stop:
        main(["weights", str(tmp_path / "losses.npy"), "-r", "calibrate"])
    assert stop.value.code == 2
    assert "argument -r/--radius: expected a number or 'calibrated', got 'calibrate'" in capsys.readouterr().err
