"""The README's Configuration table lists every environment variable the settings read."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def variables_read_by_settings():
    source = (ROOT / "genonaut" / "settings.py").read_text()
    return set(re.findall(r"""env_(?:str|bool|int|float|list)\(\s*["']([A-Z0-9_]+)["']""", source))


def configuration_table():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Z0-9_]+)` \|", section, flags=re.MULTILINE))


def test_every_setting_is_documented():
    read = variables_read_by_settings()
    assert {"DATABASE_URL", "COMFYUI_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"} <= read  # the scan works
    assert sorted(read - configuration_table()) == []


def test_no_documented_variable_is_stale():
    assert sorted(configuration_table() - variables_read_by_settings()) == []


def test_settings_is_the_only_reader_of_the_environment():
    readers = []
    for app in ("genonaut", "generation", "models_registry"):
        for path in (ROOT / app).rglob("*.py"):
            if path.name in {"settings.py", "test_settings.py", "wsgi.py", "asgi.py"}:
                continue
            # copying the environment for a subprocess is fine; looking a variable up is not
            if re.search(r"os\.environ\.get|os\.environ\[|os\.getenv", path.read_text()):
                readers.append(str(path.relative_to(ROOT)))
    assert readers == []
