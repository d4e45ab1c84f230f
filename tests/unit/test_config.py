import pytest

from pgsam_node.config import load_settings
from pgsam_node.errors import ConfigError


def test_defaults_are_secure_and_embedded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(None)
    assert s.dicom.bind == "127.0.0.1"
    assert s.web.bind == "127.0.0.1"
    assert s.database_url == f"sqlite:///{tmp_path / 'storage' / 'node.sqlite3'}"


def test_yaml_and_env_override(tmp_path, monkeypatch):
    cfg = tmp_path / "node.yaml"
    cfg.write_text("dicom:\n  ae_title: MYNODE\n  port: 4242\nassembly:\n  stable_seconds: 5\n")
    monkeypatch.setenv("PGSAM_DICOM__PORT", "5555")
    s = load_settings(cfg)
    assert s.dicom.ae_title == "MYNODE"
    assert s.dicom.port == 5555  # environment beats the file
    assert s.assembly.stable_seconds == 5


@pytest.mark.parametrize(
    "yaml_text, key",
    [
        ("dicom:\n  port: 70000\n", "dicom.port"),
        ("dicom:\n  ae_title: THIS_AE_TITLE_IS_TOO_LONG\n", "dicom.ae_title"),
        ("assembly:\n  stable_seconds: -1\n", "assembly.stable_seconds"),
        ("dicom:\n  prot: 11112\n", "dicom.prot"),
        ("destinations:\n  - name: pacs\n    ae_title: ORTHANC\n    host: 127.0.0.1\n",
         "destinations.0: Value error, destination 'pacs' (type dimse) needs port"),
    ],
)
def test_invalid_value_names_the_key(tmp_path, yaml_text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    assert key in str(ei.value)


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_example_config_is_valid():
    from pgsam_node.config import PROJECT_ROOT

    s = load_settings(PROJECT_ROOT / "config" / "node.example.yaml")
    assert s.dicom.ae_title


@pytest.mark.parametrize("value", ["0", "65", "-1", "auto", "2.5", "true"])
def test_acceptor_processes_must_be_a_whole_number_from_1_to_64(tmp_path, value):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"dicom:\n  acceptor_processes: {value}\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(cfg)
    assert "dicom.acceptor_processes" in str(ei.value) and "from 1 to 64" in str(ei.value)


def test_acceptor_processes_defaults_to_one_and_accepts_the_environment(monkeypatch):
    assert load_settings(None).dicom.acceptor_processes == 1
    monkeypatch.setenv("PGSAM_DICOM__ACCEPTOR_PROCESSES", "4")
    assert load_settings(None).dicom.acceptor_processes == 4
