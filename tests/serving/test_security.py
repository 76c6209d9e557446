"""Serving's security settings: placeholder admin tokens, CORS, secrets kept out of logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from aidetect.settings import InsecureSettings, Settings, placeholder_problem
from serving.app import create_app
from storage import LocalStore
from tests.conftest import make_s3_store
from tests.serving.test_hardening import settings_for

STRONG = "r4nd0m-Adm1n-T0ken-9f2c4e1b7a"  # 30 characters, not a placeholder
PLACEHOLDERS = ["", "   ", "CHANGE_ME", "changeme", "change-me-please", "admin", "secret", "token", "s3cret", "x" * 40]


def s3_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"home": tmp_path / "home", "store_url": "s3://aidetect/prod", **overrides}
    return Settings(**values)  # type: ignore[arg-type]


# placeholder admin token ---------------------------------------------------------------------
@pytest.mark.parametrize("token", PLACEHOLDERS)
def test_serving_refuses_to_start_on_a_placeholder_token_with_s3(tmp_path: Path, token: str) -> None:
    with pytest.raises(InsecureSettings, match="AIDETECT_ADMIN_TOKEN") as raised:
        create_app(s3_settings(tmp_path, admin_token=token))
    if len(token) >= 8:  # the message never echoes the token (short ones are common words in it)
        assert token not in str(raised.value)


def test_the_refusal_comes_from_the_environment_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDETECT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AIDETECT_STORE_URL", "s3://aidetect")
    monkeypatch.setenv("AIDETECT_ADMIN_TOKEN", "CHANGE_ME")  # what .env.example ships
    with pytest.raises(InsecureSettings, match="AIDETECT_ADMIN_TOKEN is a placeholder"):
        create_app(Settings())
    monkeypatch.setenv("AIDETECT_ADMIN_TOKEN", "")  # set but empty
    with pytest.raises(InsecureSettings, match="AIDETECT_ADMIN_TOKEN is empty"):
        create_app(Settings())


def test_s3_store_with_a_real_token_or_none_starts(tmp_path: Path) -> None:
    create_app(s3_settings(tmp_path, admin_token=STRONG))  # builds; the store is only opened in lifespan
    create_app(s3_settings(tmp_path))  # unset: the admin endpoints are disabled, nothing to guess


def test_placeholder_rule() -> None:
    assert placeholder_problem("") == "empty"
    assert placeholder_problem("Change_Me") == "a placeholder"
    assert placeholder_problem("short-but-random") is None  # exactly 16
    assert placeholder_problem("short-but-rando") == "shorter than 16 characters"
    assert placeholder_problem(f" {STRONG}") == "padded with whitespace"
    assert placeholder_problem("a" * 32) == "one repeated character"
    assert placeholder_problem(STRONG) is None


def test_embedded_default_keeps_todays_behaviour(tmp_path: Path, mean_store: tuple[LocalStore, str]) -> None:
    store, _ = mean_store
    assert settings_for(tmp_path, store).embedded and not s3_settings(tmp_path).embedded
    with TestClient(create_app(settings_for(tmp_path, store, alias_poll_seconds=3600))) as client:
        response = client.post("/v1/admin/reload")  # unset: disabled
        assert response.status_code == 403 and "AIDETECT_ADMIN_TOKEN" in response.json()["detail"]
    with TestClient(create_app(settings_for(tmp_path, store, admin_token="admin", alias_poll_seconds=3600))) as client:
        ok = client.post("/v1/admin/reload", headers={"Authorization": "Bearer admin"})  # a local demo may
        assert ok.status_code == 200, ok.text


# CORS ----------------------------------------------------------------------------------------
def test_no_cors_headers_by_default(tmp_path: Path, mean_store: tuple[LocalStore, str]) -> None:
    store, _ = mean_store
    with TestClient(create_app(settings_for(tmp_path, store, alias_poll_seconds=3600))) as client:
        simple = client.get("/v1/model", headers={"Origin": "https://app.example.com"})
        assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
        preflight = client.options(
            "/v1/predict",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_only_for_the_configured_origins(tmp_path: Path, mean_store: tuple[LocalStore, str]) -> None:
    store, _ = mean_store
    settings = settings_for(tmp_path, store, alias_poll_seconds=3600, cors_origins="https://app.example.com/")
    assert settings.cors_origins == ["https://app.example.com"]
    with TestClient(create_app(settings)) as client:
        allowed = client.get("/v1/model", headers={"Origin": "https://app.example.com"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        preflight = client.options(
            "/v1/predict",
            headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        other = client.get("/v1/model", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        # feedback from the allowed site is accepted; from another still refused
        evil = client.post("/v1/feedback", data={"label": "ai"}, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
        app = client.post("/v1/feedback", data={"label": "ai"}, headers={"Origin": "https://app.example.com"})
        assert app.status_code == 422  # past the origin check: no image and no prediction id


def test_cors_origins_must_be_origins(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CORS origin"):
        s3_settings(tmp_path, cors_origins="app.example.com")


def test_upload_limit_is_documented() -> None:
    description = Settings.model_fields["max_upload_bytes"].description or ""
    assert "413" in description and "bytes" in description


# secrets stay out of logs --------------------------------------------------------------------
def test_admin_token_never_logged_nor_shown(
    tmp_path: Path, mean_store: tuple[LocalStore, str], caplog: pytest.LogCaptureFixture
) -> None:
    store, _ = mean_store
    settings = settings_for(tmp_path, store, admin_token=STRONG, alias_poll_seconds=3600)
    assert STRONG not in repr(settings) and STRONG not in str(settings)
    assert STRONG not in settings.model_dump_json()
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {STRONG}"}).status_code == 200
        wrong = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {STRONG}x"})
        assert wrong.status_code == 401 and STRONG not in wrong.text
    assert caplog.records  # something was logged at all
    assert STRONG not in caplog.text


def test_s3_secret_key_never_logged(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret_key = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRETKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)  # moto accepts any credentials
    store = make_s3_store(s3_endpoint)
    url = store.url  # type: ignore[attr-defined]
    settings = Settings(
        home=tmp_path / "home",
        store_url=url,
        s3_endpoint_url=s3_endpoint,
        admin_token=STRONG,  # type: ignore[arg-type]
        alias_poll_seconds=3600,
    )
    assert secret_key not in repr(settings)
    caplog.set_level(logging.DEBUG)  # botocore's debug logs included
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {STRONG}"}).status_code == 200
    assert any(r.name.startswith("botocore") for r in caplog.records)  # the S3 client did log
    assert secret_key not in caplog.text and STRONG not in caplog.text
