// The JSON Schema of `talus-tool.json`, compiled into the binaries that validate manifests (the
// code hook, `talus tool run-local`), so an installation cannot run with a stale or missing copy.
// `schemas/talus-tool.schema.json` in the source tree is the same text, for editors and other
// tools; a test keeps the two identical.

/// The manifest schema.
public enum ManifestSchema {
    /// The schema text, byte for byte `schemas/talus-tool.schema.json`.
    public static let text = #"""
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://talus.invalid/schemas/talus-tool.schema.json",
  "title": "Talus tool or component manifest (talus-tool.json)",
  "description": "The manifest of tools/<name>/ and components/<name>/ in the Talus code repository (DESIGN.md section 8). The code hook validates every changed manifest against this schema and against the checks that need the repository (the name equals the directory, a tool has an entry command whose file exists and is executable, defaults fit their types, component references resolve).",
  "type": "object",
  "required": ["name", "description"],
  "additionalProperties": false,
  "properties": {
    "$schema": {
      "type": "string",
      "description": "optional: where editors find this schema"
    },
    "name": {
      "$ref": "#/$defs/name"
    },
    "description": {
      "type": "string",
      "maxLength": 4096,
      "description": "one or more sentences shown by talus code list and show"
    },
    "entry": {
      "type": "string",
      "minLength": 1,
      "maxLength": 4096,
      "description": "the command /bin/sh -c runs in the tool directory, e.g. ./run.sh; required for tools"
    },
    "params": {
      "type": "array",
      "maxItems": 256,
      "items": {
        "$ref": "#/$defs/param"
      }
    },
    "components": {
      "type": "array",
      "maxItems": 64,
      "uniqueItems": true,
      "items": {
        "$ref": "#/$defs/name"
      },
      "description": "components bundled with the tool (components/<name>/), found through TALUS_COMPONENTS"
    },
    "timeout": {
      "type": "integer",
      "minimum": 1,
      "maximum": 604800,
      "description": "default wall-clock limit of one run, seconds"
    },
    "resources": {
      "type": "object",
      "additionalProperties": false,
      "properties": {
        "cpus": {
          "type": "integer",
          "minimum": 1,
          "maximum": 64
        },
        "memory_mb": {
          "type": "integer",
          "minimum": 64,
          "maximum": 262144
        }
      }
    }
  },
  "$defs": {
    "name": {
      "type": "string",
      "pattern": "^[A-Za-z][A-Za-z0-9_-]{0,63}$",
      "description": "letters, digits, _ and -, starting with a letter, at most 64 characters"
    },
    "param": {
      "type": "object",
      "required": ["name", "type"],
      "additionalProperties": false,
      "properties": {
        "name": {
          "$ref": "#/$defs/name"
        },
        "type": {
          "enum": ["string", "int", "float", "bool", "list", "object", "fileset", "component"]
        },
        "description": {
          "type": "string",
          "maxLength": 4096
        },
        "default": true,
        "required": {
          "type": "boolean"
        }
      },
      "allOf": [
        {
          "if": { "required": ["type", "default"], "properties": { "type": { "const": "string" } } },
          "then": { "properties": { "default": { "type": "string" } } }
        },
        {
          "if": { "required": ["type", "default"], "properties": { "type": { "const": "int" } } },
          "then": { "properties": { "default": { "type": "integer" } } }
        },
        {
          "if": { "required": ["type", "default"], "properties": { "type": { "const": "float" } } },
          "then": { "properties": { "default": { "type": "number" } } }
        },
        {
          "if": { "required": ["type", "default"], "properties": { "type": { "const": "bool" } } },
          "then": { "properties": { "default": { "type": "boolean" } } }
        },
        {
          "if": { "required": ["type", "default"], "properties": { "type": { "const": "list" } } },
          "then": { "properties": { "default": { "type": "array" } } }
        },
        {
          "if": { "required": ["type", "default"], "properties": { "type": { "const": "object" } } },
          "then": { "properties": { "default": { "type": "object" } } }
        },
        {
          "if": { "required": ["type", "default"], "properties": { "type": { "enum": ["fileset", "component"] } } },
          "then": { "properties": { "default": { "type": "string", "minLength": 1 } } }
        }
      ]
    }
  }
}
"""#

    /// The loaded schema (the text is checked by the tests, so loading cannot fail).
    public static let schema: JSONSchema = {
        do { return try JSONSchema(text: text) } catch { fatalError("the built-in manifest schema does not load: \(error)") }
    }()
}
