"""Every PDA_ variable a deployment file sets is a field of pda.settings.Settings."""

from __future__ import annotations

from pathlib import Path

from .deploy_checks import deploy_files, settings_variables, unknown_pda_variables


def test_settings_variables_are_read_from_the_settings_class() -> None:
    known = settings_variables()
    assert {"PDA_REDIS_URL", "PDA_QUEUE_NAME", "PDA_API_KEYS", "PDA_HEARTBEAT_FILE"} <= known


def test_deploy_files_are_found() -> None:
    names = {p.name for p in deploy_files()}
    assert {"docker-compose.yml", "Dockerfile", "config.yaml", "worker.yaml", "deploy.md"} <= names


def test_every_pda_variable_is_a_setting() -> None:
    assert unknown_pda_variables(deploy_files(), settings_variables()) == []
    # the scan reads the real files: a setting they use, unknown, is reported
    found = unknown_pda_variables(deploy_files(), settings_variables() - {"PDA_REDIS_URL"})
    assert found and all(p.endswith(": PDA_REDIS_URL is not a Settings field") for p in found)


def test_a_misspelled_variable_is_caught(tmp_path: Path) -> None:
    manifest = tmp_path / "config.yaml"
    manifest.write_text("data:\n  PDA_REDIS_URI: redis://x\n  PDA_QUEUE_NAME: pda\n")
    assert unknown_pda_variables([manifest], settings_variables()) == [
        f"{manifest}:2: PDA_REDIS_URI is not a Settings field"
    ]
