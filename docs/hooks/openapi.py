"""MkDocs hook: the client API reference page, generated from the code at build time.

`docs/api-reference.md` holds the marker `<!-- openapi -->`; this hook replaces it with
Markdown made from the OpenAPI document the API serves at `/v1/openapi.json` (the FastAPI
app's own `.openapi()`, built without a server, Postgres or Redis), so the page cannot drift
from the endpoints. Static Markdown only: no JavaScript, no network.
"""

from __future__ import annotations

import json
from typing import Any

from mkdocs.exceptions import PluginError

PAGE = "api-reference.md"
MARKER = "<!-- openapi -->"
# Where worker/web/app.py mounts the API; FastAPI adds it to `servers` on the first request.
MOUNT = "/v1"
METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
REF = "#/components/schemas/"

Schema = dict[str, Any]


def on_page_markdown(markdown: str, *, page: Any, **_: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} has no {MARKER} marker for the OpenAPI reference")
    from worker.web.api.app import create_app

    return markdown.replace(MARKER, render(create_app().openapi()))


def render(document: dict[str, Any]) -> str:
    """The document as Markdown: each operation, then the schemas they name."""
    servers = document.get("servers") or [{"url": MOUNT}]
    base = servers[0]["url"].rstrip("/")
    info = document["info"]
    out = [
        f"**{info['title']}**, version {info['version']}. {info.get('description', '')}",
        "",
        f"Paths below include the `{base}` prefix the web app mounts the API at.",
        "",
    ]
    schemes = document.get("components", {}).get("securitySchemes", {})
    if schemes:
        out += ["## Authentication", ""]
    for name, scheme in schemes.items():
        how = (
            f"`Authorization: {scheme['scheme'].capitalize()} KEY`"
            if scheme.get("type") == "http"
            else f"`{scheme.get('type')}`"
        )
        out += [f"**{name}**: {how}. {scheme.get('description', '')}", ""]
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                out += operation(method, base + path, item[method], item.get("parameters", []))
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            out += [f"### {name} {{ #{anchor(name)} }}", ""]
            if schema.get("description"):
                out += [schema["description"], ""]
            out += fields(schema)
    return "\n".join(out)


def operation(method: str, path: str, op: Schema, shared: list[Schema]) -> list[str]:
    out = [f"## `{method.upper()} {path}` {{ #{op.get('operationId', '')} }}", ""]
    if op.get("summary"):
        out += [f"*{op['summary']}*", ""]
    if op.get("description"):
        out += [op["description"], ""]
    if op.get("security"):
        names = ", ".join(
            f"[{name}](#authentication)" for requirement in op["security"] for name in requirement
        )
        out += [f"Authentication: {names}.", ""]
    parameters = [*shared, *op.get("parameters", [])]
    if parameters:
        out += [
            "**Parameters**",
            "",
            "| name | in | type | required | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        for p in parameters:
            schema = p.get("schema", {})
            text = " ".join(filter(None, [p.get("description"), limits(schema)]))
            out.append(
                row(
                    f"`{p['name']}`",
                    p["in"],
                    type_of(schema),
                    "yes" if p.get("required") else "no",
                    text,
                )
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        out += [f"**Request body** ({required})", ""]
        if body.get("description"):
            out += [body["description"], ""]
        for media, content in body.get("content", {}).items():
            out += [f"`{media}`: {type_of(content.get('schema', {}))}", ""]
            out += fields(content.get("schema", {}))
    out += ["**Responses**", "", "| status | description | body |", "| --- | --- | --- |"]
    for status, answer in sorted(op.get("responses", {}).items()):
        bodies = ", ".join(
            f"{type_of(content.get('schema', {}))} (`{media}`)"
            for media, content in answer.get("content", {}).items()
        )
        out.append(row(status, answer.get("description", ""), bodies or "none"))
    out.append("")
    return out


def fields(schema: Schema) -> list[str]:
    """A table of an object schema's properties (nothing for a `$ref`, named elsewhere)."""
    properties = schema.get("properties", {})
    if not properties:
        return []
    required = set(schema.get("required", []))
    out = ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for name, prop in properties.items():
        text = " ".join(filter(None, [prop.get("description"), limits(prop)]))
        out.append(row(f"`{name}`", type_of(prop), "yes" if name in required else "no", text))
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out.append(row("*any other*", type_of(extra), "no", ""))
    return [*out, ""]


def type_of(schema: Schema) -> str:
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF)
        return f"[{name}](#{anchor(name)})"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(type_of(s) for s in schema[key])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_of(schema.get('items', {}))}"
    if kind == "object" and "title" in schema and "properties" in schema:
        return f"object ({schema['title']})"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_of(schema['additionalProperties'])}"
    if "format" in schema:
        return f"{kind} ({schema['format']})"
    return str(kind)


def limits(schema: Schema) -> str:
    """A schema's constraints and default, in words, including those of its alternatives."""
    words = {
        "minLength": "at least {} character(s)",
        "maxLength": "at most {} character(s)",
        "minimum": "at least {}",
        "maximum": "at most {}",
        "minItems": "at least {} item(s)",
        "maxItems": "at most {} item(s)",
        "maxProperties": "at most {} field(s)",
        "pattern": "matches `{}`",
    }
    found: list[str] = []
    parts = [schema, *schema.get("anyOf", [])]
    if isinstance(schema.get("items"), dict):
        parts.append(schema["items"])
    for part in parts:
        for key, text in words.items():
            if key in part:
                value = part[key]
                value = int(value) if isinstance(value, float) and value.is_integer() else value
                text = text.format(value)
                found.append(text.replace("(s)", "" if value == 1 else "s"))
    if "default" in schema:
        found.append(f"default `{json.dumps(schema['default'])}`")
    return f"({'; '.join(found)})" if found else ""


def anchor(name: str) -> str:
    return f"schema-{name.lower()}"


def row(*cells: str) -> str:
    return "| " + " | ".join(cell.replace("\n", " ").replace("|", "\\|") for cell in cells) + " |"
