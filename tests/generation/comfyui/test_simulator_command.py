"""``manage.py comfyui_simulator`` refuses bad fault settings before listening."""

import pytest
from django.core.management import CommandError, call_command


@pytest.mark.parametrize("faults, message", [('{"explode": 1}', "unknown faults: explode"),
                                             ("{not json", "--faults is not JSON")])
def test_bad_faults_are_refused(faults, message):
    with pytest.raises(CommandError, match=message):
        call_command("comfyui_simulator", "--port", "0", "--faults", faults)


def test_unknown_faults_from_settings_are_refused(settings):
    settings.SIMULATOR_FAULTS = {"view_fail_rate": 0.1, "meteor": True}
    with pytest.raises(CommandError, match="unknown faults: meteor"):
        call_command("comfyui_simulator", "--port", "0")
