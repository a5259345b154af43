"""A cold-tier URL never carries a credential.

The URL becomes the catalog's ``location`` of every cold checkpoint and is
printed by ``driftloop checkpoints list/show``; fsspec keeps
``KEY:SECRET@bucket`` of ``s3://KEY:SECRET@bucket/prefix`` as the root of
the filesystem, so a secret given that way was printed. Such URLs are now
refused when the settings load, without echoing the value.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from services.checkpoints.config import StoreConfig
from services.cli import app

SECRET = "wJalrXUtnFEMI-K7MDENG"


@pytest.mark.parametrize(
    "url",
    [
        f"s3://AKIDEXAMPLE:{SECRET}@bucket/prefix",
        f"sftp://user:{SECRET}@host/store",
        f"abfs://container/store?account_key={SECRET}",
        f"gs://bucket/store?token={SECRET}",
    ],
)
def test_a_cold_url_with_a_credential_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="carries a credential"):
        StoreConfig(cold_url=url)


@pytest.mark.parametrize("url", ["", "s3://bucket/prefix", "file:///tmp/cold", "memory://cold"])
def test_plain_cold_urls_are_accepted(url: str) -> None:
    assert StoreConfig(cold_url=url).cold_url == url


def test_the_cli_names_the_setting_and_never_prints_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_STORE_COLD_URL", f"s3://AKIDEXAMPLE:{SECRET}@bucket/p")
    result = CliRunner().invoke(app, ["checkpoints", "list", "--store", str(tmp_path)])
    assert result.exit_code == 2
    assert "COLD_URL" in result.output
    assert SECRET not in result.output
