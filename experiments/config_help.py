"""`--help` for an experiment: every config key, its default and the comment written beside it.

The comments are read from the source of `jdl.config.base_config` and of each `get_config`
the experiment builds on, so they are written once, where the defaults are set.
"""

import ast
import inspect
import io
import tokenize
import types
from collections.abc import Callable, Iterator

import ml_collections

from jdl.config import base_config


def line_comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """({line: text} of comments after code, {line: text} of comment-only lines)."""
    trailing, alone = {}, {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found = alone if token.line.lstrip().startswith("#") else trailing
            found[token.start[0]] = token.string.lstrip("#").strip()
    return trailing, alone


def _config_path(target: ast.expr) -> list[str] | None:
    """["model", "widths"] for the assignment target `c.model.widths`; None for others."""
    parts = []
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    return parts[::-1] if isinstance(target, ast.Name) and parts else None


def _dict_literal(value: ast.expr) -> ast.Dict | None:
    """The dict of `{...}` or `ConfigDict({...})`."""
    if isinstance(value, ast.Call) and value.args:
        value = value.args[0]
    return value if isinstance(value, ast.Dict) else None


def _described(path: list[str], value: ast.expr, line: int, comments: tuple) -> Iterator:
    """(dotted key, comment) for one assigned key and, for a dict value, each key inside:
    the comment after it on its line, else the comment lines just above it."""
    trailing, alone = comments
    comment = trailing.get(line) or _comment_above(line, alone)
    if comment:
        yield ".".join(path), comment
    literal = _dict_literal(value) or ast.Dict(keys=[], values=[])
    for key, item in zip(literal.keys, literal.values, strict=True):
        if isinstance(key, ast.Constant):
            yield from _described([*path, key.value], item, key.lineno, comments)


def _comment_above(line: int, comments: dict) -> str:
    """The comment lines directly above `line`, joined."""
    block = []
    while line - 1 in comments:
        line -= 1
        block.insert(0, comments[line])
    return " ".join(block)


def key_comments(function: Callable) -> dict[str, str]:
    """{dotted config key: comment} of the `c.key = value  # comment` lines of `function`."""
    source = inspect.getsource(function)
    comments = line_comments(source)
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            path = _config_path(node.targets[0])
            if path:
                found.update(_described(path, node.value, node.lineno, comments))
    return found


def config_functions(get_config: Callable) -> list[Callable]:
    """`base_config`, then every experiment's `get_config` that `get_config` builds on."""
    functions, pending = [], [get_config]
    while pending:
        function = pending.pop()
        functions.insert(0, function)
        modules = [v for v in function.__globals__.values() if isinstance(v, types.ModuleType)]
        pending += [
            m.get_config
            for m in modules
            if m.__name__.startswith("experiments.") and hasattr(m, "get_config")
        ]
    return [base_config, *functions]


def flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple]:
    """(dotted key, value) of every leaf of `config`; an empty sub-config is one leaf."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict) and len(value):
            yield from flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def help_text(get_config: Callable, usage: str, about: str) -> str:
    """The usage line, the experiment's description and one line per config key."""
    comments = {}
    for function in config_functions(get_config):
        comments.update(key_comments(function))
    rows = []
    for key, value in flat_items(get_config()):
        shown = dict(value) if isinstance(value, ml_collections.ConfigDict) else value
        comment = comments.get(key) or comments.get(key.rsplit(".", 1)[0], "")
        rows.append((f"--config.{key}={shown!r}", comment))
    width = max(len(flag) for flag, _ in rows)
    lines = [f"  {flag:<{width}}  {comment}".rstrip() for flag, comment in rows]
    return "\n".join([usage, "", about.strip(), "", "Config keys (default, then meaning):", *lines])
