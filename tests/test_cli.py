"""The CLI on a tiny model saved to disk: JSON verdicts, one-shot chat, calibrate, and one-line errors."""

import json

import pytest

from scans_guard.cli import main, parse_layers


def test_classify_json(tiny_on_disk, tiny_engine, capsys):
    rc = main(
        [
            "classify",
            "--json",
            "--model",
            str(tiny_on_disk / "model"),
            "--artifact",
            str(tiny_on_disk / "artifact"),
            "How do I bake bread?",
            "Paris?",
        ]
    )
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["How do I bake bread?", "Paris?"]
    expected = tiny_engine.classify(["How do I bake bread?", "Paris?"])
    assert [x["score"] for x in lines] == pytest.approx([v.score for v in expected], abs=1e-5)


def test_chat_one_shot_shows_verdict_and_reply(tiny_on_disk, capsys):
    rc = main(
        [
            "chat",
            "--model",
            str(tiny_on_disk / "model"),
            "--artifact",
            str(tiny_on_disk / "artifact"),
            "--max-new-tokens",
            "5",
            "Paris?",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "score=" in out and "steer=" in out


def test_calibrate_writes_a_loadable_artifact(tiny_on_disk, tmp_path, capsys):
    out = tmp_path / "art"
    rc = main(
        [
            "calibrate",
            "--model",
            str(tiny_on_disk / "model"),
            "--out",
            str(out),
            "--n-anchors",
            "4",
            "--steer-layers",
            "1-2",
            "--classify-layers",
            "2,3",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "artifact.json").read_text())
    assert meta["recipe"]["steer_layers"] == [1, 2] and meta["recipe"]["classify_layers"] == [2, 3]
    assert meta["notes"]["command"].startswith("scans-guard calibrate")


def test_user_errors_are_one_line(tmp_path, capsys):
    rc = main(["classify", "--model", str(tmp_path / "missing"), "--artifact", str(tmp_path), "hi"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("scans-guard: error:") and err.count("\n") == 1


def test_other_model_needs_an_artifact(tiny_on_disk, capsys):
    assert main(["classify", "--model", str(tiny_on_disk / "model"), "hi"]) == 2
    assert "needs an artifact" in capsys.readouterr().err


def test_parse_layers():
    assert parse_layers("8-10,12") == [8, 9, 10, 12]


def test_chat_sampling_flags_are_seeded(tiny_on_disk, capsys):
    args = [
        "chat",
        "--model",
        str(tiny_on_disk / "model"),
        "--artifact",
        str(tiny_on_disk / "artifact"),
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.2",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
        "--repetition-penalty",
        "1.1",
        "--seed",
        "4",
        "--model-sampling",
        "Paris?",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_demo_runs_every_prompt_steered_and_plain(tiny_on_disk, capsys):
    from scans_guard.cli import DEMO_PROMPTS

    rc = main(
        [
            "demo",
            "--model",
            str(tiny_on_disk / "model"),
            "--artifact",
            str(tiny_on_disk / "artifact"),
            "--max-new-tokens",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert rc in (0, None) and "steer T=" in out and "guard T=" in out
    assert all(f"### {p}" in out for p in DEMO_PROMPTS) and out.count("SCANS (guard+steer):") == len(DEMO_PROMPTS)


def test_chat_retry_flag_retries_a_refused_steered_reply(tiny_on_disk, tiny_artifact, tmp_path, capsys, monkeypatch):
    import scans_guard.cli as cli
    from scans_guard import RetryPolicy

    tiny_artifact.with_thresholds(steer=1e3).save(tmp_path / "away")  # every prompt steered away
    monkeypatch.setattr(
        cli, "RetryPolicy", lambda: RetryPolicy(judge_tokens=2, judge=lambda prompt, reply: True)
    )  # a judge that finds every reply refusing
    args = [
        "chat",
        "--model",
        str(tiny_on_disk / "model"),
        "--artifact",
        str(tmp_path / "away"),
        "--max-new-tokens",
        "4",
        "Paris?",
    ]
    assert main(args) == 0 and "retried at" not in capsys.readouterr().out
    assert main([*args, "--retry"]) == 0
    assert f"[retried at {-2 * tiny_artifact.recipe.alpha_benign:g}" in capsys.readouterr().out


def _transformers_output_state():
    """transformers' logger level and tqdm hook, read without changing them."""
    from transformers.utils import logging as hf_logging

    hook = hf_logging.set_tqdm_hook(None)
    hf_logging.set_tqdm_hook(hook)
    return hf_logging.get_logger("transformers").level, hf_logging.is_progress_bar_enabled(), hook


def test_classify_loads_quietly_unless_verbose(tiny_on_disk, capsys, monkeypatch):
    args = ["classify", "--model", str(tiny_on_disk / "model"), "--artifact", str(tiny_on_disk / "artifact"), "hi"]
    before = _transformers_output_state()
    assert main(args) == 0
    assert "Loading weights" not in capsys.readouterr().err
    assert _transformers_output_state() == before  # silenced for the load only
    assert main([*args, "--verbose"]) == 0
    assert "Loading weights" in capsys.readouterr().err
    monkeypatch.setenv("SCANS_GUARD_VERBOSE", "1")
    assert main(args) == 0
    assert "Loading weights" in capsys.readouterr().err
    assert _transformers_output_state() == before
