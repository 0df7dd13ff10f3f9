"""Command-line flags made from the configuration's sections, so a default lives in one place.

A step command (``webvse crawl --per-keyword 50``) offers one flag per field of the
sections its step reads; the flag's type, choices and help (with the default) come from
the field of :mod:`tasks.pipeline_config`, and a flag given on the command line becomes
the dotted override ``crawl.per_keyword=50`` of the flow's configuration. A flag that is
not given is absent from the overrides, so the YAML file's value (or the field's default)
stands: there is no second default in the command line to drift from the first.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from storage.errors import InputError

OVERRIDE_MARK = "config:"  # argparse dest of a generated flag: "config:crawl.per_keyword"


def _plain_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``: the type of a value given on the command line."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _plain_type(options[0])
    alias = getattr(annotation, "__value__", None)  # a `type X = Literal[...]` alias
    return _plain_type(alias) if alias is not None else annotation


def _flag_help(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    shown = "empty" if default is None else default
    return f"{info.description or ''} (default: {shown})".strip()


def add_section_flags(
    parser: argparse.ArgumentParser, sections: Mapping[str, type[BaseModel]], skip: tuple[str, ...] = ()
) -> None:
    """One flag per field of each named section (``{"crawl": CrawlSettings}``), in a group per
    section; ``skip`` names fields that mean nothing to this command."""
    taken = {flag for action in parser._actions for flag in action.option_strings}
    for name, model in sections.items():
        group = parser.add_argument_group(f"{name} settings ({name}.* in the YAML configuration)")
        for field_name, info in model.model_fields.items():
            if field_name in skip:
                continue
            flag = "--" + field_name.replace("_", "-")
            if flag in taken:
                raise InputError(f"flag {flag} of section {name} is taken already: name the field apart")
            taken.add(flag)
            kind = _plain_type(info.annotation)
            options: dict[str, Any] = {
                "dest": f"{OVERRIDE_MARK}{name}.{field_name}",
                "default": argparse.SUPPRESS,
                "help": _flag_help(info),
            }
            if kind is bool:
                options["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(kind) is Literal:
                options["choices"] = list(typing.get_args(kind))
            elif kind in (int, float, str):
                options["type"] = kind
                options["metavar"] = field_name.upper()
            else:
                continue  # lists and nested sections: --set or the YAML file
            group.add_argument(flag, **options)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The dotted overrides of the generated flags the user gave (``{"crawl.per_keyword": 50}``)."""
    return {dest.removeprefix(OVERRIDE_MARK): value for dest, value in vars(args).items() if dest.startswith(OVERRIDE_MARK)}
