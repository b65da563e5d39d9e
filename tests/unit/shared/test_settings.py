import pytest
from pydantic import ValidationError

from shared.settings import DEFAULT_MODEL, Settings
from tests.stack import ROOT


def test_defaults_serve_minilm():
    assert Settings(_env_file=None).embed_models == [DEFAULT_MODEL]


def test_models_are_read_comma_separated(monkeypatch):
    monkeypatch.setenv("EMBED_MODELS", " a/b , c ,")
    assert Settings(_env_file=None).embed_models == ["a/b", "c"]


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_hub_token_is_secret(monkeypatch):
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_secret")
    settings = Settings(_env_file=None)
    assert settings.hugging_face_hub_token is not None
    assert "hf_secret" not in repr(settings)
    assert settings.hugging_face_hub_token.get_secret_value() == "hf_secret"


def test_any_model_means_any_hub_id_never_a_path():
    settings = Settings(_env_file=None, allow_any_model=True)
    assert settings.model_allowed("BAAI/bge-small-en-v1.5") and settings.model_allowed("all-mpnet-base-v2")
    for name in ("/etc", "../secrets", "owner/../x", "a/b/c", "owner/name with space", ""):
        assert not settings.model_allowed(name), name
    assert not Settings(_env_file=None).model_allowed("BAAI/bge-small-en-v1.5")


def test_every_setting_is_in_the_readmes_configuration_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in table]
    assert missing == []
