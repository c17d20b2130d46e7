"""`scans-guard serve --ray` flags and the replica options they stand for, checked without Ray (it is only imported
once the flags are valid)."""

import pytest

from scans_guard.cli import build_parser, main
from scans_guard.errors import InvalidArgumentError
from scans_guard.serving.ray_cli import ray_options_from_args
from scans_guard.serving.ray_options import RayServeOptions


def _options(*flags: str) -> RayServeOptions:
    return ray_options_from_args(build_parser().parse_args(["serve", "--ray", *flags]))


def test_fixed_replicas_by_default():
    options = _options().deployment_options()
    assert options["num_replicas"] == 1 and "autoscaling_config" not in options
    assert _options("--replicas", "3").deployment_options()["num_replicas"] == 3


def test_autoscaling_flags_reach_the_deployment_options():
    options = _options(
        "--min-replicas",
        "2",
        "--max-replicas",
        "5",
        "--target-ongoing-requests",
        "4",
        "--upscale-delay-s",
        "3",
        "--num-cpus-per-replica",
        "0.5",
        "--num-gpus-per-replica",
        "1",
        "--max-ongoing-requests",
        "16",
    ).deployment_options()
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 2,
        "max_replicas": 5,
        "target_ongoing_requests": 4.0,
        "upscale_delay_s": 3.0,
    }
    assert options["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 1.0}
    assert options["max_ongoing_requests"] == 16


def test_autoscaling_defaults_fill_the_missing_bounds():
    assert _options("--max-replicas", "4").deployment_options()["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8.0,
    }
    assert _options("--min-replicas", "3").bounds() == (3, 3)
    assert _options("--target-ongoing-requests", "2").bounds() == (1, 2)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--replicas", "2", "--min-replicas", "1"], "--replicas or autoscaling"),
        (["--replicas", "0"], "--replicas: Input should be greater than or equal to 1"),
        (["--min-replicas", "3", "--max-replicas", "2"], "--min-replicas (3) is above --max-replicas (2)"),
        (["--target-ongoing-requests", "0"], "--target-ongoing-requests: Input should be greater than 0"),
        (["--target-ongoing-requests", "64"], "above --max-ongoing-requests (32)"),
        (["--num-cpus-per-replica", "-1"], "--num-cpus-per-replica: Input should be greater than or equal to 0"),
        (["--max-ongoing-requests", "0"], "--max-ongoing-requests: Input should be greater than or equal to 1"),
        (["--torch-threads", "0"], "--torch-threads must be at least 1"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(flags, message, capsys):
    with pytest.raises(InvalidArgumentError) as caught:
        _options(*flags)
    assert message in str(caught.value)
    assert main(["serve", "--ray", *flags]) == 2  # before Ray or a model is touched
    assert message in capsys.readouterr().err


def test_ray_flags_need_ray(capsys):
    assert main(["serve", "--replicas", "2", "--torch-threads", "1"]) == 2
    assert "--replicas, --torch-threads only apply with --ray" in capsys.readouterr().err


def test_serve_run_options_are_validated_alike():
    with pytest.raises(InvalidArgumentError, match="min_replicas \\(2\\) is above max_replicas \\(1\\)"):
        RayServeOptions.parse({"min_replicas": "2", "max_replicas": "1"})
    with pytest.raises(InvalidArgumentError, match="num_replica"):
        RayServeOptions.parse({"num_replica": 2})  # a typo
    assert RayServeOptions.parse({"num_replicas": "2", "num_cpus": "0.5"}).deployment_options()["num_replicas"] == 2
