"""Command-line errors are one line, and the CLI passes the input-length cap on.

Runs on the tiny model; see docs/hardening.md for the table these tests back.
"""

import dataclasses
import json

import pytest

from scans_guard.cli import main
from scans_guard.model import embedded as default_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the command line -----------------------------------------------------------------------------------------------


def _cli(tiny_on_disk, command, *args):
    return [command, "--model", str(tiny_on_disk / "model"), "--artifact", str(tiny_on_disk / "artifact"), *args]


@pytest.mark.parametrize(
    "argv, match",
    [
        (["chat", "--temperature", "1e-45", "hi"], "temperature: temperature must be 0 (greedy) or at least 0.001"),
        (["chat", "--temperature", "inf", "hi"], "temperature: Input should be a finite number"),
        (["demo", "--temperature", "nan"], "temperature: Input should be a finite number"),
        (["chat", "--max-new-tokens", "0", "hi"], "max_new_tokens"),
        (["classify", "--device", "cpu:abc", "hi"], "device must be cpu, cuda, cuda:N or mps, got 'cpu:abc'"),
        (["chat", "--device", "cpu:abc", "hi"], "device must be"),
        (["classify", "--max-input-tokens", "10", "a long enough prompt for ten tokens"], "max_input_tokens=10"),
        (["classify", "--max-input-tokens", "-3", "hi"], "max_input_tokens must be a positive integer"),
    ],
)
def test_cli_errors_are_one_line(tiny_on_disk, capsys, argv, match):
    assert main(_cli(tiny_on_disk, *argv)) == 2
    err = capsys.readouterr().err
    error = err[err.index("scans-guard: error:") :]  # after transformers' progress bar, if the model loaded
    assert error.count("\n") == 1 and error.endswith("\n"), err
    assert match in error


def test_cli_validation_error_lists_every_field_on_one_line(tiny_on_disk, capsys):
    assert (
        main(
            [
                "calibrate",
                "--model",
                str(tiny_on_disk / "model"),
                "--out",
                "x",
                "--alpha-benign",
                "inf",
                "--grey-zone",
                "nan",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid CalibrationConfig: alpha_benign: " in err and "; grey_zone: " in err


def test_cli_max_input_tokens_zero_disables_the_cap(tiny_on_disk, capsys):
    prompt = "x " * 40
    assert main(_cli(tiny_on_disk, "classify", "--max-input-tokens", "20", prompt)) == 2
    assert main(_cli(tiny_on_disk, "classify", "--max-input-tokens", "0", "--json", prompt)) == 0
    assert json.loads(capsys.readouterr().out)["label"] in {"harmful", "benign"}


def test_missing_default_model_packages_is_one_cli_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SCANS_GUARD_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(
        default_model,
        "DEFAULT_MODEL",
        dataclasses.replace(default_model.QWEN_15B, package_prefix="scans_guard_no_such_part_package"),
    )
    assert main(["classify", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scans-guard: error:") and "pip install 'scans-guard[default-model]'" in err
    assert err.count("\n") == 1
