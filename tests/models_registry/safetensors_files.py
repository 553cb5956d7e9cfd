"""Real, tiny safetensors files written by the tests themselves (no weights downloaded, ever)."""

import json
import struct


def write_safetensors(path, *, tensors=None, metadata=None):
    """Write a valid safetensors file: 8-byte little-endian header length, JSON header, tensor bytes.

    ``tensors`` maps names to byte counts (stored as 1-D uint8 tensors); ``metadata`` becomes
    ``__metadata__``. Returns the path.
    """
    tensors = tensors if tensors is not None else {"model.weight": 4}
    header, offset = {}, 0
    for name, nbytes in tensors.items():
        header[name] = {"dtype": "U8", "shape": [nbytes], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(i % 256 for i in range(offset)))
    return path


SD15_TENSORS = {"cond_stage_model.transformer.text_model.embeddings.position_ids": 8,
                "model.diffusion_model.input_blocks.0.0.weight": 8}
SDXL_TENSORS = {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": 8,
                "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": 8}
SDXL_LORA_TENSORS = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha": 2,
                     "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": 8}
