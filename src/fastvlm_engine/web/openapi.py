"""OpenAPI request bodies for routes that read their body themselves."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["json_body_openapi", "media_body_openapi"]

_REF = "#/components/schemas/{model}"


def media_body_openapi(model: type[BaseModel], kind: str) -> dict[str, Any]:
    """The three forms a media endpoint takes: JSON, multipart with a ``<kind>`` file, raw media."""
    schema = model.model_json_schema(ref_template=_REF)
    # On the wire every form field is text; the server parses numbers and booleans from it.
    options = {name: {"type": "string", "description": prop.get("description", "")}
               for name, prop in schema.get("properties", {}).items()
               if name not in (f"{kind}_path", f"{kind}_base64")}
    form = {"type": "object", "required": [kind],
            "properties": {kind: {"type": "string", "format": "binary", "description": f"The {kind} file."},
                           "request": {"type": "string", "description": "Optional: the options as one JSON object."},
                           **options}}
    raw = {"schema": {"type": "string", "format": "binary"},
           "description": f"The {kind} bytes; options in the query string."}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": form},
        f"{kind}/*": raw,
        "application/octet-stream": raw}}}


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """A JSON body described by ``model``, its nested models written out in place (a route that reads
    its body itself registers no components, so references would point nowhere)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline({**definitions[ref.removeprefix("#/$defs/")],
                               **{k: v for k, v in node.items() if k != "$ref"}})
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
