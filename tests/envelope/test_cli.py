import json
import stat
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from envelope.cli import keys_app, parse_ref
from envelope.grants import SignedGrant, grant_ref

runner = CliRunner()


def test_new_then_show_prints_the_same_did_and_never_the_seed(tmp_path: Path) -> None:
    made = runner.invoke(keys_app, ["new", "alice", "--dir", str(tmp_path), "--json"])
    assert made.exit_code == 0, made.output
    did = json.loads(made.output)["did"]
    assert did.startswith("did:key:z6Mk")
    assert stat.S_IMODE((tmp_path / "alice.json").stat().st_mode) == 0o600
    shown = runner.invoke(keys_app, ["show", "alice", "--dir", str(tmp_path), "--json"])
    assert json.loads(shown.output)["did"] == did
    seed = json.loads((tmp_path / "alice.json").read_text())["seed"]
    assert seed not in shown.output


def test_maestro_home_sets_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAESTRO_HOME", str(tmp_path))
    assert runner.invoke(keys_app, ["new", "bob"]).exit_code == 0
    assert (tmp_path / "keys" / "bob.json").is_file()


def test_new_refuses_to_overwrite_and_show_explains_a_missing_key(tmp_path: Path) -> None:
    args = ["--dir", str(tmp_path)]
    assert runner.invoke(keys_app, ["new", "carol", *args]).exit_code == 0
    assert runner.invoke(keys_app, ["new", "carol", *args]).exit_code != 0
    assert runner.invoke(keys_app, ["show", "nobody", *args]).exit_code != 0
    assert runner.invoke(keys_app, ["new", "../escape", *args]).exit_code != 0


def test_grant_mints_a_signed_grant_for_a_did(tmp_path: Path) -> None:
    args = ["--dir", str(tmp_path), "--json"]
    runner.invoke(keys_app, ["new", "root", *args])
    did = json.loads(runner.invoke(keys_app, ["new", "agent", *args]).output)["did"]
    out = tmp_path / "agent.grant"
    made = runner.invoke(
        keys_app,
        ["grant", "root", "--to", did, "--capability", "moon:dispatch", "--out", str(out), *args],
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["grant"] == grant_ref(out.read_bytes()).hex()
    assert msgspec.msgpack.decode(out.read_bytes(), type=SignedGrant).sig


def test_revoke_refuses_what_is_neither_a_ref_nor_a_grant_file(tmp_path: Path) -> None:
    assert runner.invoke(keys_app, ["revoke", "not-a-ref"]).exit_code != 0
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00not msgpack")
    assert runner.invoke(keys_app, ["revoke", str(junk)]).exit_code != 0


def test_revoke_takes_the_grant_file_as_its_ref(tmp_path: Path) -> None:
    made = runner.invoke(keys_app, ["new", "root", "--dir", str(tmp_path), "--json"])
    did = json.loads(made.output)["did"]
    out = tmp_path / "g.grant"
    minted = runner.invoke(keys_app, ["grant", "root", "--to", did, "--capability", "moon:*",
                                      "--out", str(out), "--dir", str(tmp_path), "--json"])
    assert parse_ref(str(out)).hex() == json.loads(minted.output)["grant"]
