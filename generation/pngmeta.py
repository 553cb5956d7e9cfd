"""PNG metadata: add an A1111-style ``parameters`` text chunk without re-encoding the image.

ComfyUI's PNGs already carry ``prompt`` and ``workflow`` text chunks; we keep every byte of
them and of the pixel data, and insert one chunk right after ``IHDR``. Working on chunks (not
pixels) keeps the file bit-exact and costs microseconds, and it works on a stream: only the
signature and ``IHDR`` (33 bytes) are read before the rest is passed through.
"""

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = len(PNG_SIGNATURE) + 4 + 4 + 13 + 4  # length, type, 13 data bytes, CRC


class NotAPng(ValueError):
    """The bytes are not a PNG (bad signature or no IHDR first)."""


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def text_chunk(keyword, text):
    """A ``tEXt`` chunk, or ``iTXt`` (UTF-8) when the text is not Latin-1, as Pillow and A1111 do."""
    key = keyword.encode("latin-1")
    try:
        return _chunk(b"tEXt", key + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword \0 compression-flag compression-method language-tag \0 translated-keyword \0 text
        return _chunk(b"iTXt", key + b"\0\0\0" + b"\0" + b"\0" + text.encode("utf-8"))


def insert_text_chunks(chunks, texts):
    """Yield the PNG read from the iterable of byte ``chunks`` with ``texts`` ({keyword: text})
    inserted after ``IHDR``. Raises :class:`NotAPng` if the stream does not start like a PNG."""
    head = b""
    iterator = iter(chunks)
    for piece in iterator:
        head += piece
        if len(head) >= _IHDR_END:
            break
    if len(head) < _IHDR_END or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise NotAPng("the image is not a PNG")
    (ihdr_length,) = struct.unpack(">I", head[8:12])
    if ihdr_length != 13:
        raise NotAPng("the PNG's IHDR chunk is malformed")
    yield head[:_IHDR_END]
    for keyword, text in texts.items():
        yield text_chunk(keyword, text)
    if len(head) > _IHDR_END:
        yield head[_IHDR_END:]
    yield from iterator


def a1111_text(*, prompt, negative_prompt="", pairs=(), loras=()):
    """The ``parameters`` text A1111, Civitai and most image browsers read.

    Format: prompt, then ``Negative prompt: …``, then one line of ``Key: value`` pairs (``None``
    values are left out; a ``Model`` value is shown without folder and extension, as A1111 does).
    ``loras`` (``[{name, strength_model, strength_clip}]``) add ``Lora weights`` and inline
    ``<lora:name:weight>`` tags, which readers that only look at the prompt find too.
    """
    lines = [prompt] if prompt else []
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    pairs = [(key, model_name(value) if key == "Model" and value else value) for key, value in pairs]
    if loras:
        pairs.append(("Lora weights", ", ".join(
            f"{model_name(lora['name'])}: {lora.get('strength_model', 1.0)}/{lora.get('strength_clip', 1.0)}"
            for lora in loras)))
    pairs.append(("Version", "Genonaut (ComfyUI)"))
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs if value not in (None, "")))
    text = "\n".join(lines)
    if loras and prompt:
        tags = " ".join(f"<lora:{model_name(lora['name'])}:{lora.get('strength_model', 1.0)}>" for lora in loras)
        text = text.replace(prompt, f"{prompt} {tags}", 1)
    return text


def model_name(name):
    base = name.rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _quote(value):
    text = str(value)
    # A1111 quotes values that contain its separators
    if any(ch in text for ch in ",:\n") and not text.startswith('"'):
        return '"' + text.replace('"', '\\"').replace("\n", " ") + '"'
    return text
