"""ObjectInfo: node classes, model lists from both option-list shapes, a digest of the capabilities."""

import copy

from generation.comfyui.object_info import ObjectInfo, recorded_object_info


def test_recorded_catalogue_classes_and_model_lists():
    info = recorded_object_info()
    assert len(info.node_classes) == 423 and isinstance(info.node_classes, frozenset)
    assert {"LoadImage", "KSampler", "ImageUpscaleWithModel", "SaveAnimatedWEBP"} <= info.node_classes
    assert info.model_lists() == {"checkpoints": ["fake.safetensors", "tiny-sd15-random.safetensors"],
                                  "loras": ["tiny-lora.safetensors"], "upscale_models": []}
    assert info.fetched_at is None


def test_missing_loaders_give_empty_lists_and_the_combo_shape_is_read():
    data = copy.deepcopy(recorded_object_info().data)
    del data["LoraLoader"]
    data["UpscaleModelLoader"]["input"]["required"]["model_name"] = ["COMBO", {"options": ["4x-a.pth"]}]
    data["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] = [["x.safetensors"], {}]
    info = ObjectInfo(data, fetched_at=123.0)
    assert info.model_lists() == {"checkpoints": ["x.safetensors"], "loras": [], "upscale_models": ["4x-a.pth"]}
    assert info.loras == () and info.upscale_models == ("4x-a.pth",) and info.fetched_at == 123.0
    assert ObjectInfo({}).model_lists() == {"checkpoints": [], "loras": [], "upscale_models": []}


def test_capabilities_digest_changes_with_classes_and_models_only():
    data = recorded_object_info().data
    same = copy.deepcopy(data)
    same["KSampler"]["description"] = "a new text"
    same["LoadImage"]["input"]["required"]["image"][0].append("new-upload.png")  # uploads are not capabilities
    assert ObjectInfo(same).capabilities_digest == recorded_object_info().capabilities_digest
    more_models = copy.deepcopy(data)
    more_models["LoraLoader"]["input"]["required"]["lora_name"][0].append("other.safetensors")
    fewer_nodes = {name: node for name, node in data.items() if name != "ImageUpscaleWithModel"}
    digests = {ObjectInfo(d).capabilities_digest for d in (data, more_models, fewer_nodes)}
    assert len(digests) == 3
