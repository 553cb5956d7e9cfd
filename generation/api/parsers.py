"""Request body parsers that honour ``DATA_UPLOAD_MAX_MEMORY_SIZE``.

DRF's parsers read the WSGI stream directly, so Django's body size limit (which guards
``request.body`` and ``request.POST``) never applies to them. These read at most the limit
plus one byte and answer 413 past it; deeply nested JSON is a parse error, not a crash.
Strings no database column can hold (NUL characters, unpaired UTF-16 surrogates from
``\\udXXX`` escapes) are refused here, naming the field, before any query sees them.
"""

from django.conf import settings
from django.http import QueryDict
from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError

from generation.api.errors import RequestTooLarge


def _read_bounded(stream, parser_context):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    request = (parser_context or {}).get("request")
    if limit is not None and request is not None:
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            raise RequestTooLarge()
    if stream is None:
        return b""
    data = stream.read(limit + 1) if limit is not None else stream.read()
    if limit is not None and len(data) > limit:
        raise RequestTooLarge()
    return data


class BoundedJSONParser(parsers.JSONParser):
    """Strict JSON (no NaN/Infinity), size-limited, any nesting depth answered without a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = _read_bounded(stream, parser_context)
        encoding = parsers.get_encoding(parser_context or {})
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ParseError(f"JSON parse error - the body is not valid {encoding}.") from exc
        try:
            data = parsers.json.loads(text, parse_constant=parsers.json.strict_constant)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply.") from exc
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from exc
        reject_unstorable_strings(data)
        return data


def _unstorable(text):
    if "\x00" in text:
        return "Null characters are not allowed."
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "Unpaired surrogate characters are not allowed."
    return None


def reject_unstorable_strings(data):
    """Raise ``ValidationError`` naming every key or string value that cannot be stored (iterative:
    the depth of the document does not matter)."""
    fields = {}
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = _unstorable(value)
            if problem:
                fields.setdefault(path or "non_field_errors", []).append(problem)
        elif isinstance(value, dict):
            for key, item in value.items():
                problem = _unstorable(key)
                shown = key.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00") if problem else key
                child = f"{path}.{shown}" if path else shown
                if problem:
                    fields.setdefault(child, []).append(problem.replace("are", "in field names are"))
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}.{index}" if path else str(index), item) for index, item in enumerate(value))
    if fields:
        raise ValidationError(fields)


class BoundedFormParser(parsers.FormParser):
    """``application/x-www-form-urlencoded`` with the same size limit (for ``curl -d``)."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = _read_bounded(stream, parser_context)
        encoding = parsers.get_encoding(parser_context or {})
        try:
            return QueryDict(raw, encoding=encoding)
        except Exception as exc:  # TooManyFieldsSent and friends
            raise ParseError("Form parse error.") from exc


class BoundedMultiPartParser(parsers.MultiPartParser):
    """``multipart/form-data`` (input image uploads): a body larger than two images at
    ``INPUT_MAX_BYTES`` plus the form's other fields is refused (413) before it is read."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        limit = 2 * settings.GENERATION["INPUT_MAX_BYTES"] + (settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)
        if request is not None:
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            if declared > limit:
                raise RequestTooLarge()
        try:
            return super().parse(stream, media_type, parser_context)
        except ParseError:
            raise
        except Exception as exc:  # TooManyFieldsSent, a malformed boundary, …
            raise ParseError("Multipart form parse error.") from exc
