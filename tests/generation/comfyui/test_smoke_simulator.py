import uuid

import pytest

from generation.comfyui import events as ev
from generation.comfyui.workflow import build_workflow

pytestmark = pytest.mark.integration


def test_txt2img_runs_end_to_end(simulator):
    client = simulator.client()
    workflow = build_workflow(prompt="a lighthouse", negative_prompt="",
                              checkpoint_model="tiny-sd15-random.safetensors",
                              lora_models=[], width=64, height=64, batch_size=1,
                              sampler_params={"seed": 1, "steps": 3}, filename_prefix="t/a")
    prompt_id, client_id = str(uuid.uuid4()), str(uuid.uuid4())
    with client.event_stream(client_id) as events:
        client.submit(workflow, prompt_id=prompt_id, client_id=client_id)
        seen = list(events.follow(prompt_id, idle_interval=0.2))
    assert isinstance(seen[-1], ev.ExecutionSuccess)
    assert [e.value for e in seen if isinstance(e, ev.Progress)] == [1, 2, 3]
    assert simulator.executions(prompt_id) == 1
