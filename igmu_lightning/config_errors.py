"""Config mistakes as one line: jsonargparse's 15-60 lines of usage and nested Union errors become
``IGMUError("<key> ...: <fix>")`` naming the key, the file it came from and the closest valid keys."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from pathlib import Path

import yaml
from jsonargparse import ArgumentParser
from jsonargparse._common import debug_mode_active  # jsonargparse's own switch for tracebacks

from igmu_lightning.errors import IGMUError

CLASS = re.compile(r"Problem with given class_path '([^']+)'")
KEY = re.compile(r'Parser key "([^"]+)"')
UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
TYPE = re.compile(r"Expected a <class '([^']+)'>\. Got value: (.*)")
# an Optional[...] value (e.g. lr: float | None): the type, then None's failure, then the value
OPTIONAL_TYPE = re.compile(r"- Expected a <class '([^']+)'>\n\s*- Expected a <class 'NoneType'>\n\s*Given value type: .*\n\s*Given value: (.*)")
REQUIRED = re.compile(r"the following arguments are required: (.*)")
NO_ATTR = re.compile(r"module '([^']+)' has no attribute '([^']+)'")
UNRECOGNIZED = re.compile(r"(?:unrecognized arguments|does not accept option)[: ]+'?-*([\w.]+)")
NO_FILE = re.compile(r"File does not exist: '([^']+)'")


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` / ``-c`` files of a command line, in order."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _holds_key(node, key: str) -> bool:
    if isinstance(node, dict):
        return key in node or any(_holds_key(v, key) for v in node.values())
    if isinstance(node, list):
        return any(_holds_key(v, key) for v in node)
    return False


def where(key: str, args: list[str]) -> str:
    """Where ``key`` was set: the command line, or the last config file that holds it."""
    if any(a.lstrip("-").split("=")[0].endswith(key) and a.startswith("--") for a in args):
        return "on the command line"
    for file in reversed(config_files(args)):
        try:
            if _holds_key(yaml.safe_load(Path(file).read_text(encoding="utf-8")), key):
                return f"in '{file}'"
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
    return "in the config"


def init_args(class_path: str) -> list[str]:
    """The argument names ``class_path``'s ``__init__`` accepts (empty when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls.__init__).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def suggest(word: str, choices: list[str]) -> str:
    """'did you mean a, b?' from difflib, or the valid names when nothing is close."""
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return f"valid keys: {', '.join(sorted(choices))}" if choices and len(choices) <= 20 else "see --help for the valid keys"


def one_line(message: str, args: list[str], parser_keys: list[str] | None = None) -> str:
    """jsonargparse's error text -> one line naming the key, where it was set and the fix."""
    classes = CLASS.findall(message)
    keys = KEY.findall(message)
    dotted = ".init_args.".join(keys) if classes else ".".join(keys)
    owner = f"{classes[-1].rsplit('.', 1)[-1]} " if classes else ""
    if m := UNKNOWN.search(message):
        key = m[1]
        full = f"{dotted}.init_args.{key}" if dotted else key
        return f"unknown key '{full}' {where(key, args)}: {owner}has no argument '{key}'; {suggest(key, init_args(classes[-1]) if classes else [])}"
    if m := NO_ATTR.search(message):
        module = importlib.import_module(m[1]) if m[1] else None
        names = [n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("_")] if module else []
        return f"class_path '{classes[-1] if classes else m[2]}' {where('class_path', args)} does not exist: {suggest(m[2], names)}"
    if m := TYPE.search(message) or OPTIONAL_TYPE.search(message):
        key = keys[-1] if keys else "a value"
        return f"'{dotted or key}' {where(key, args)} must be {'an' if m[1][0] in 'aeiou' else 'a'} {m[1]}, got '{m[2].strip()}': fix its value"
    if m := REQUIRED.search(message):
        missing = m[1].strip()
        at = f" of {owner.strip()}" if owner else ""
        files = config_files(args)
        into = f"in '{files[-1]}'" if files else "in a --config file"
        return f"'{missing}'{at} has no value: set {'.init_args.'.join([*keys, missing]) if keys else missing} {into} or on the command line"
    if m := UNRECOGNIZED.search(message):
        key = m[1]
        return f"unknown key '{key}' {where(key.rsplit('.', 1)[-1], args)}: {suggest(key, parser_keys or [])}"
    if m := NO_FILE.search(message):
        return f"config file '{m[1]}' does not exist: fix the --config path"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    detail = [line for line in lines if not line.startswith(("Does not validate", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>"))]
    return " ".join(detail)[:400] + ": fix the config (--help lists the valid keys)"


def parser_keys(parser: ArgumentParser) -> list[str]:
    """Every option a parser (and its subcommands) knows, as dotted keys."""
    keys = []
    for action in parser._actions:
        if action.dest and action.dest not in ("help", "config", "print_config"):
            keys.append(action.dest)
    return keys


class OneLineErrors:
    """Mixin for a jsonargparse parser: a parse error raises ``IGMUError`` with one line instead of
    printing the usage and exiting. ``igmu_args``: the command line, to find the culprit's file."""

    igmu_args: tuple[str, ...] | list[str] = ()

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or debug_mode_active():
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        raise IGMUError(one_line(message, list(self.igmu_args), parser_keys(parser))) from None


class OneLineParser(OneLineErrors, ArgumentParser):
    """``jsonargparse.ArgumentParser`` with one-line errors (evaluate.py)."""
