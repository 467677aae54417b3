"""Validation of apiextensions.k8s.io/v1 CustomResourceDefinitions, which the
Kubernetes OpenAPI Debian ships (v1.14, v1beta1 CRDs only) cannot check.

Two parts, as the API server does them:
  * the CRD object itself, strictly (unknown fields and wrong types fail),
    by a JSON Schema of apiextensions.k8s.io/v1 written down here from the
    Kubernetes API reference (CustomResourceDefinitionSpec, ...Version,
    CustomResourceColumnDefinition, JSONSchemaProps with the
    x-kubernetes-* extensions);
  * the structural-schema rules v1 requires of each version's
    openAPIV3Schema (k8s.io/apiextensions-apiserver pkg/apiserver/schema):
    every node has a type (unless x-kubernetes-int-or-string), properties
    and additionalProperties exclude each other, arrays have items, the
    keys of an x-kubernetes-list-type: map are required in its items, and
    x-kubernetes-preserve-unknown-fields is only ever true.
"""
import jsonschema

STRINGS = {"type": "array", "items": {"type": "string"}}
PROPS = {"$ref": "#/definitions/props"}
JSON_SCHEMA_PROPS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **{k: {"type": "string"} for k in ("$ref", "$schema", "description", "format", "id",
                                            "pattern", "title", "type", "x-kubernetes-list-type",
                                            "x-kubernetes-map-type")},
        **{k: {"type": "integer"} for k in ("maxItems", "maxLength", "maxProperties", "minItems",
                                             "minLength", "minProperties")},
        **{k: {"type": "number"} for k in ("maximum", "minimum", "multipleOf")},
        **{k: {"type": "boolean"} for k in ("exclusiveMaximum", "exclusiveMinimum", "nullable",
                                             "uniqueItems", "x-kubernetes-preserve-unknown-fields",
                                             "x-kubernetes-int-or-string",
                                             "x-kubernetes-embedded-resource")},
        "required": STRINGS,
        "x-kubernetes-list-map-keys": STRINGS,
        "enum": {"type": "array"},
        "default": {},
        "example": {},
        "properties": {"type": "object", "additionalProperties": PROPS},
        "patternProperties": {"type": "object", "additionalProperties": PROPS},
        "definitions": {"type": "object", "additionalProperties": PROPS},
        "additionalProperties": {"anyOf": [{"type": "boolean"}, PROPS]},
        "additionalItems": {"anyOf": [{"type": "boolean"}, PROPS]},
        "items": {"anyOf": [PROPS, {"type": "array", "items": PROPS}]},
        "allOf": {"type": "array", "items": PROPS},
        "anyOf": {"type": "array", "items": PROPS},
        "oneOf": {"type": "array", "items": PROPS},
        "not": PROPS,
    },
}


def _obj(required, **props):
    return {"type": "object", "additionalProperties": False, "required": required,
            "properties": props}


CRD_V1 = _obj(
    ["apiVersion", "kind", "metadata", "spec"],
    apiVersion={"enum": ["apiextensions.k8s.io/v1"]},
    kind={"enum": ["CustomResourceDefinition"]},
    metadata={"type": "object", "required": ["name"]},
    spec=_obj(
        ["group", "names", "scope", "versions"],
        group={"type": "string"},
        scope={"enum": ["Namespaced", "Cluster"]},
        preserveUnknownFields={"type": "boolean"},
        conversion={"type": "object"},
        names=_obj(["kind", "plural"], kind={"type": "string"}, listKind={"type": "string"},
                   plural={"type": "string"}, singular={"type": "string"},
                   shortNames=STRINGS, categories=STRINGS),
        versions={"type": "array", "minItems": 1, "items": _obj(
            ["name", "served", "storage"],
            name={"type": "string"}, served={"type": "boolean"}, storage={"type": "boolean"},
            deprecated={"type": "boolean"}, deprecationWarning={"type": "string"},
            schema=_obj(["openAPIV3Schema"], openAPIV3Schema=PROPS),
            subresources=_obj([], status={"type": "object", "maxProperties": 0},
                              scale={"type": "object"}),
            additionalPrinterColumns={"type": "array", "items": _obj(
                ["name", "type", "jsonPath"], name={"type": "string"}, type={"type": "string"},
                jsonPath={"type": "string"}, format={"type": "string"},
                description={"type": "string"}, priority={"type": "integer"})},
        )},
    ),
)
CRD_V1["definitions"] = {"props": JSON_SCHEMA_PROPS}


def is_crd_v1(obj):
    return obj.get("apiVersion") == "apiextensions.k8s.io/v1" and \
        obj.get("kind") == "CustomResourceDefinition"


def _structural(node, path, out):
    if not isinstance(node, dict):
        return
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        out.append(f"{path}: structural schema: type is required")
    if "properties" in node and "additionalProperties" in node:
        out.append(f"{path}: structural schema: properties and additionalProperties exclude each other")
    if node.get("type") == "array" and "items" not in node:
        out.append(f"{path}: structural schema: an array needs items")
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        out.append(f"{path}: x-kubernetes-preserve-unknown-fields must be true or absent")
    if node.get("x-kubernetes-list-type") == "map":
        required = set(node.get("items", {}).get("required", []))
        for key in node.get("x-kubernetes-list-map-keys", []) or ["(none given)"]:
            if key not in required:
                out.append(f"{path}: list-map key {key} must be required in the items")
    for name, child in node.get("properties", {}).items():
        _structural(child, f"{path}.properties.{name}", out)
    if isinstance(node.get("additionalProperties"), dict):
        _structural(node["additionalProperties"], f"{path}.additionalProperties", out)
    if isinstance(node.get("items"), dict):
        _structural(node["items"], f"{path}.items", out)


def crd_errors(obj):
    """Every violation of a v1 CRD, as 'path: message' strings; [] when valid."""
    out = []
    validator = jsonschema.Draft4Validator(CRD_V1)
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
        out.append(f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}")
    if out:
        return out
    storage = [v["name"] for v in obj["spec"]["versions"] if v["storage"]]
    if len(storage) != 1:
        out.append(f"spec.versions: exactly one version must be the storage version, got {storage}")
    plural, group = obj["spec"]["names"]["plural"], obj["spec"]["group"]
    if obj["metadata"]["name"] != f"{plural}.{group}":
        out.append(f"metadata.name: must be {plural}.{group}")
    for i, v in enumerate(obj["spec"]["versions"]):
        root = v.get("schema", {}).get("openAPIV3Schema")
        if root is None:
            out.append(f"spec.versions[{i}].schema.openAPIV3Schema: required")
            continue
        _structural(root, f"spec.versions[{i}].schema.openAPIV3Schema", out)
    return out
