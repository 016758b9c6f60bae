"""Command-line options from dataclasses, through ``transformers.HfArgumentParser``.

Each stage declares its options once, as dataclasses composed from shared parts (every field a ``--flag``
with its help in the field metadata). :func:`dataclass_parser` turns the parts into an ``HfArgumentParser``
that a subcommand takes as a parent (``subparsers.add_parser(..., parents=[...])``), one argument group per
part (its ``_argument_group_name``). Two additions keep today's command lines working: ``--no-FLAG`` for every
boolean, and number options that also read ``1e6``, ``10_000`` and ``none`` (see :func:`lenient_numbers`).
:func:`add_command` registers one subcommand from its parts, its extra arguments and its function.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
Argument = tuple[tuple[str, ...], dict[str, Any]]


def dataclass_parser(*parts: type, suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """An ``HfArgumentParser`` (without ``-h``, to be a parent) with one option group per dataclass part.

    ``suppress_defaults`` leaves options that are not given out of the namespace, so presets and config
    files can fill them (``train``'s layering).
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(parts, add_help=False)
    names = []
    for part in parts:
        for f in dataclasses.fields(part):
            names.append(f.name)
            # HfArgumentParser adds --no-X only for True defaults; a field named no_X is its own negation
            if f.type is bool and f.default is not True and not f.name.startswith("no_"):
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                    default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for action in parser._actions:
        # --help and usage show the --kebab-case spelling first (HfArgumentParser also accepts --snake_case)
        action.option_strings.sort(key=lambda s: "_" in s)
        if suppress_defaults and action.dest in names:  # not set_defaults: that would put SUPPRESS in the namespace
            action.default = argparse.SUPPRESS
    return parser


def _number(kind: type):
    def convert(text: str) -> Any:
        cleaned = text.strip().replace("_", "")
        if cleaned.lower() in ("none", "null"):
            return None
        if kind is int and "e" in cleaned.lower():
            value = float(cleaned)
            if not value.is_integer():
                raise ValueError(text)
            return int(value)
        return kind(cleaned)

    convert.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return convert


def lenient_numbers(parser: argparse.ArgumentParser) -> None:
    """Let ``parser``'s int and float options read ``1e6``, ``10_000`` and ``none`` (unset) as well."""
    parser.register("type", int, _number(int))
    parser.register("type", float, _number(float))


def from_namespace(cls: type[T], ns: argparse.Namespace, **extra: Any) -> T:
    """Dataclass ``cls`` from the parsed options that name its fields (``extra`` wins)."""
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(ns, f.name)}
    return cls(**{**values, **extra})


def given_options(ns: argparse.Namespace, *parts: type) -> dict[str, Any]:
    """The options of ``parts`` given on the command line (with suppressed defaults, the ones present)."""
    names = {f.name for part in parts for f in dataclasses.fields(part)}
    return {k: v for k, v in vars(ns).items() if k in names}


def arg(*flags: str, **options: Any) -> Argument:
    """One extra argument for :func:`add_command`: ``add_argument``'s positional and keyword arguments."""
    return flags, options


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    parts: Sequence[type] = (),
    arguments: Sequence[Argument] = (),
    suppress_defaults: bool = False,
    **texts: Any,
) -> argparse.ArgumentParser:
    """Subcommand ``name`` that runs ``func``: the option groups of the dataclass ``parts``, then ``arguments``.

    With ``parts``, number options are lenient and ``--help`` shows each default (unless ``suppress_defaults``,
    which leaves the defaults to presets); ``texts`` are ``add_parser``'s (``help``, ``description``, ...).
    """
    if parts:
        texts["parents"] = [dataclass_parser(*parts, suppress_defaults=suppress_defaults)]
        if not suppress_defaults:
            texts.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
    parser = subparsers.add_parser(name, **texts)
    for flags, options in arguments:
        parser.add_argument(*flags, **options)
    if parts:
        lenient_numbers(parser)
    parser.set_defaults(func=func)
    return parser
