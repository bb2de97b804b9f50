"""YAML loading that remembers where every value came from, so errors can name the file and line.

PyYAML's YAML 1.1 resolver reads `5:5:1` as the base-60 integer 18301; data ratios are written exactly that way, so
this loader drops the sexagesimal forms and keeps such scalars as strings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["LoadedYaml", "YamlError", "load_yaml"]


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(([0-9][0-9_]*)?\.[0-9_]+([eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(inf|Inf|INF)|\.(nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class YamlError(ValueError):
    pass


class LoadedYaml:
    """A parsed YAML document and the 1-based line of every value, keyed by its path tuple."""

    def __init__(self, data: Any, lines: dict[tuple, int], source: str) -> None:
        self.data = data
        self.lines = lines
        self.source = source

    def line_of(self, path: tuple) -> int | None:
        """The line of the deepest known node on `path` (a missing key points at its parent)."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _walk(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _walk(value, path + (key.value,), lines)
            lines[path + (key.value,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, path + (i,), lines)


def load_yaml(path: Path) -> LoadedYaml:
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise YamlError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    lines: dict[tuple, int] = {}
    if node is not None:
        _walk(node, (), lines)
    return LoadedYaml(data, lines, str(path))
