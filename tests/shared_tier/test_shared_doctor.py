"""`atom-tier doctor` on the shared tier, against a real Valkey/Redis server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atom_tier.devtools.valkey_server import ValkeyServer
from tests.cli.test_doctor import doctor


def findings(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    result = doctor("--json", env={"PYTHONHASHSEED": "0", **env})
    data = json.loads(result.stdout)
    return (
        result.returncode,
        {f["code"]: f for f in data["findings"]},
        result.stdout + result.stderr,
    )


def test_doctor_reports_the_server_its_policy_and_a_chunk_round_trip(
    fresh_valkey: ValkeyServer,
) -> None:
    fresh_valkey.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    fresh_valkey.command("CONFIG", "SET", "maxmemory", "0")
    code, found, text = findings({"ATOM_TIER_SHARED_URL": fresh_valkey.url})
    assert code == 0
    assert found["shared-url"]["level"] == "ok" and "not signed" in found["shared-url"]["message"]
    server = found["shared-server"]
    assert server["level"] == "ok" and "MiB/s" in server["message"] and "PING" in server["message"]
    assert found["shared-server-memory"]["level"] == "warning"
    assert "allkeys-lru" in text
    assert fresh_valkey.password and fresh_valkey.password not in text
    assert fresh_valkey.command("DBSIZE") == 0  # its test value was deleted


def test_doctor_wrong_password_is_an_error_naming_the_setting(fresh_valkey: ValkeyServer) -> None:
    url = fresh_valkey.url.replace(f":{fresh_valkey.password}@", ":wrong-pass-77@")
    code, found, text = findings({"ATOM_TIER_SHARED_URL": url})
    assert code == 1 and found["shared-server"]["level"] == "error"
    assert "ATOM_TIER_SHARED_URL" in found["shared-server"]["fix"]
    assert "wrong-pass-77" not in text


def test_doctor_a_server_that_is_down_is_a_warning(fresh_valkey: ValkeyServer) -> None:
    fresh_valkey.stop()
    code, found, _ = findings({"ATOM_TIER_SHARED_URL": fresh_valkey.url})
    assert code == 0 and found["shared-server"]["level"] == "warning"
    assert "retries" in found["shared-server"]["message"]


def test_doctor_bad_url_and_unreadable_secret_file_are_errors(tmp_path: Path) -> None:
    code, found, _ = findings({"ATOM_TIER_SHARED_URL": "mooncakestore://h:1"})
    assert code == 1 and found["shared-url"]["level"] == "error"
    assert "ATOM_TIER_SHARED_URL" in found["shared-url"]["message"]
    code, found, _ = findings(
        {
            "ATOM_TIER_SHARED_URL": "redis://127.0.0.1:1",
            "ATOM_TIER_SHARED_SECRET_FILE": str(tmp_path / "missing"),
        }
    )
    assert code == 1 and "ATOM_TIER_SHARED_SECRET_FILE" in found["shared-url"]["message"]
