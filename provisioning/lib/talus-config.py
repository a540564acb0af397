#!/usr/bin/env python3
"""Configuration files of the Talus daemons, from their own reference.

    talus-config.py render REFERENCE.md [--set KEY=VALUE]... [--header TEXT]
    talus-config.py keys REFERENCE.md

REFERENCE.md is what `<daemon> config-reference` prints (a Markdown table: key, environment
variable, type, default, description). `render` prints a YAML file holding every key the daemon
reads: the ones given with --set as values, every other one commented out with its default,
each with its description above it, so the file documents itself. `KEY_file=PATH` sets the file
a secret key is read from (the value itself never goes into the file). Values are written as
quoted strings: the daemons parse every value from text, strictly.

The output depends only on the input (no dates, no randomness), so provisioning can compare it
with what is on disk and change nothing when nothing changed.
"""

import json
import re
import sys
import textwrap


def split_row(line):
    """Cells of a Markdown table row; `\\|` is a literal pipe."""
    cells, cur, i = [], "", 0
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cur += "|"
            i += 2
            continue
        if c == "|":
            cells.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    cells.append(cur.strip())
    return cells


def unquote(cell):
    cell = cell.strip()
    if cell in ("—", "-", ""):
        return ""
    if len(cell) >= 2 and cell[0] == "`" and cell[-1] == "`":
        return cell[1:-1]
    return cell


def parse_reference(text):
    keys = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = split_row(line)
        if len(cells) < 5:
            raise SystemExit(f"talus-config: cannot read reference row: {line}")
        name = unquote(cells[0])
        doc = " | ".join(cells[4:])
        secret = "**Secret.**" in doc
        doc = doc.replace("**Secret.**", "").strip()
        keys.append({"name": name, "env": unquote(cells[1]), "type": cells[2], "default": unquote(cells[3]),
                     "doc": doc, "secret": secret})
    if not keys:
        raise SystemExit("talus-config: no keys found in the reference")
    return keys


def yaml_string(value):
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(value, ensure_ascii=False)


def render(keys, sets, header):
    by_name = {k["name"]: k for k in keys}
    for name in sets:
        base = name[:-5] if name.endswith("_file") else None
        if name not in by_name and not (base in by_name and by_name[base]["secret"]):
            raise SystemExit(f"talus-config: {name} is not a key of this daemon")

    # Entries in reference order; a secret's _file setting takes the secret's place.
    entries = []
    for k in keys:
        if k["name"] + "_file" in sets:
            entries.append((k, k["name"] + "_file", sets[k["name"] + "_file"]))
        else:
            entries.append((k, k["name"], sets.get(k["name"])))

    out = [f"# {line}" if line else "#" for line in header.splitlines()]
    if out:
        out.append("")

    def emit(group, depth):
        # group: list of (path parts, key, name, value); all share the first `depth` parts.
        order, children = [], {}
        for item in group:
            parts = item[0]
            head = parts[depth]
            if head not in children:
                order.append(head)
                children[head] = []
            children[head].append(item)
        for head in order:
            items = children[head]
            indent = "  " * depth
            leaf = [it for it in items if len(it[0]) == depth + 1]
            for parts, k, name, value in leaf:
                if name.endswith("_file"):
                    note = f"[file holding {k['name']} ({k['type']}); env {k['env']}_FILE]"
                else:
                    secret = f" Secret: keep it in a file named by `{parts[-1]}_file`." if k["secret"] else ""
                    note = f"{secret} [{k['type']}; env {k['env']}; default: {k['default'] or 'none'}]"
                for line in textwrap.wrap(f"{k['doc']} {note.strip()}", width=max(40, 100 - len(indent) - 2)):
                    out.append(f"{indent}# {line}")
                key = parts[-1]
                if value is None:
                    out.append(f"{indent}# {key}: {yaml_string(k['default'])}")
                else:
                    out.append(f"{indent}{key}: {yaml_string(value)}")
            nested = [it for it in items if len(it[0]) > depth + 1]
            if nested:
                active = any(it[3] is not None for it in nested)
                out.append(f"{indent}{head}:" if active else f"{indent}# {head}:")
                if active:
                    emit(nested, depth + 1)
                else:
                    # A section with nothing set stays entirely commented out.
                    start = len(out)
                    emit(nested, depth + 1)
                    for i in range(start, len(out)):
                        line = out[i]
                        stripped = line.lstrip(" ")
                        pad = line[: len(line) - len(stripped)]
                        if not stripped.startswith("#"):
                            out[i] = f"{pad}# {stripped}"
            if depth == 0:
                out.append("")

    items = [(name.split("."), k, name, value) for k, name, value in entries]
    emit(items, 0)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def main(argv):
    if len(argv) < 3 or argv[1] not in ("render", "keys"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[2], encoding="utf-8") as f:
        keys = parse_reference(f.read())
    if argv[1] == "keys":
        for k in keys:
            print(k["name"], k["default"], sep="\t")
        return 0
    sets, header, rest = {}, "", argv[3:]
    while rest:
        opt = rest.pop(0)
        if opt == "--set" and rest:
            name, sep, value = rest.pop(0).partition("=")
            if not sep:
                raise SystemExit(f"talus-config: --set wants KEY=VALUE, got {name}")
            sets[name] = value
        elif opt == "--header" and rest:
            header = rest.pop(0)
        else:
            raise SystemExit(f"talus-config: unknown argument {opt}")
    sys.stdout.write(render(keys, sets, header))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
