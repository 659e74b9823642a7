"""`atom-tier replay` and `gen-traces` as commands: bad input is one clear error, exit 2."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from atom_tier.replay import cli
from atom_tier.replay.traces import load_traces


def _replay(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="atom-tier replay")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def _generate(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="atom-tier gen-traces")
    cli.add_generate_arguments(parser)
    return cli.run_generate(parser.parse_args(list(argv)))


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _one_error(capsys: pytest.CaptureFixture[str], expected: str) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("atom-tier replay: error: ") and expected in lines[0]


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _replay(str(tmp_path / "nope"), "--url", "http://127.0.0.1:1") == 2
    _one_error(capsys, "does not exist")


def test_malformed_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text('{"requests": [')
    assert _replay(str(tmp_path)) == 2
    _one_error(capsys, "bad.json cannot be read")


def test_unreachable_server(synth_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    assert _replay(str(synth_dir), "--url", url, "--out", str(synth_dir / "out")) == 2
    _one_error(capsys, f"server {url} is unreachable")
    assert not (synth_dir / "out").exists()


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--duration", "0"], "duration must be positive"),
        (["--start-users", "5", "--max-users", "2"], "max users (2) must be at least"),
        (["--token-scale", "3"], "token scale must be in (0, 1]"),
        (["--max-output-tokens", "0"], "max output tokens must be at least 1"),
        (["--ttft-target", "-1"], "TTFT target must be positive"),
        (["--think-scale", "-1"], "think scale must not be negative"),
        (["--vocab-size", "1"], "--vocab-size must be at least 2"),
        (["--limit-traces", "0"], "trace limit must be positive"),
    ],
)
def test_bad_options(
    synth_dir: Path, capsys: pytest.CaptureFixture[str], option: list[str], expected: str
) -> None:
    # The server is never reached: options are checked first (the port is closed anyway).
    url = f"http://127.0.0.1:{_closed_port()}"
    assert _replay(str(synth_dir), "--url", url, "--vocab-size", "500", *option) == 2
    _one_error(capsys, expected)


def test_gen_traces_writes_loadable_traces(tmp_path: Path) -> None:
    assert _generate(str(tmp_path / "t"), "--count", "3", "--no-gzip", "--seed", "4") == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [
        "synth_0001.json", "synth_0002.json", "synth_0003.json"
    ]  # fmt: skip
    assert load_traces(tmp_path / "t").files == 3


def test_gen_traces_bad_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _generate(str(tmp_path / "t"), "--subagent-rate", "2") == 2
    err = capsys.readouterr().err
    assert "subagent_rate must be within [0, 1]" in err and "Traceback" not in err


def test_console_script_runs_gen_traces_and_replay_errors(tmp_path: Path) -> None:
    """The installed `atom-tier` command exposes both subcommands."""
    import subprocess
    import sys

    script = Path(sys.executable).with_name("atom-tier")
    out = tmp_path / "traces"
    made = subprocess.run(
        [str(script), "gen-traces", str(out), "--count", "2"], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    assert len(list(out.iterdir())) == 2
    missing = subprocess.run(
        [str(script), "replay", str(tmp_path / "nope"), "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and "nope" in missing.stderr
