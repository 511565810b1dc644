"""CLI flags and HTTP form fields generated from core's bounded config fields
(core/common/options.py).

A range is declared once, on the config dataclass; argparse turns a value outside it into a usage
error (exit 2) and the HTTP form model into a 422 naming the field, before any work starts.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, create_model
from pydantic_core import PydanticCustomError

from patchshift.core.common.errors import ConfigError
from patchshift.core.common.options import Bounds, options_of

NO_LIMIT = object()  # "0" given for an optional field: store None (e.g. no bank size cap)


def _base_type(cls: type, name: str) -> type:
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0]


def bounded_type(name: str, kind: type, bounds: Bounds):
    """An argparse `type=`: parse, then check the bounds (argparse reports a failure as a usage
    error)."""

    def parse(text: str) -> Any:
        if bounds.optional and text.strip() == "0":
            return NO_LIMIT
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        try:
            bounds.check(name, value)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Iterable[str],
    flags: dict[str, tuple[str, ...]] | None = None,
) -> None:
    """One flag per field (--feature-dim for feature_dim unless `flags` names others), default None:
    a flag not given leaves the config's own default in force."""
    declared = options_of(cls)
    for name in names:
        field, bounds = declared[name]
        shown = "none" if field.default is None else field.default
        none = "; 0: none" if bounds.optional else ""
        text = f"{bounds.help} ({bounds.describe()}{none}; default {shown})"
        spellings = (flags or {}).get(name, ("--" + name.replace("_", "-"),))
        if bounds.choices is not None:
            parser.add_argument(
                *spellings, dest=name, choices=bounds.choices, default=None, help=text
            )
        else:
            parser.add_argument(
                *spellings,
                dest=name,
                type=bounded_type(name, _base_type(cls, name), bounds),
                default=None,
                help=text,
            )


def given(args: argparse.Namespace | BaseModel, names: Iterable[str]) -> dict[str, Any]:
    """The fields the user set (CLI namespace or HTTP form), as config keyword arguments."""
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is NO_LIMIT:
            out[name] = None
        elif value is not None:
            out[name] = value
    return out


def form_model(
    model_name: str,
    cls: type,
    names: Iterable[str],
    *,
    with_defaults: bool,
    base: type[BaseModel] = BaseModel,
) -> type[BaseModel]:
    """A pydantic model of HTTP form fields for `names`, with the same ranges as the dataclass.

    Without defaults every field is optional (None: the config's default applies); an optional
    field takes 0 for "none", as on the CLI."""
    declared = options_of(cls)
    fields: dict[str, Any] = {}
    for name in names:
        field, bounds = declared[name]
        default = (0 if field.default is None else field.default) if with_defaults else None
        none = "; 0: none" if bounds.optional else ""
        description = f"{bounds.help} ({bounds.describe()}{none}; default {field.default})"
        if bounds.choices is not None:
            kind: Any = Literal[bounds.choices]  # type: ignore[valid-type]
            constraint = Field(default, description=description)
        else:
            kind = Annotated[_base_type(cls, name), AfterValidator(_checked(name, bounds))]
            extra = {"allow_inf_nan": False} if _base_type(cls, name) is float else {}
            constraint = Field(
                default, description=description, json_schema_extra=_schema_range(bounds), **extra
            )
        fields[name] = ((kind | None) if not with_defaults else kind, constraint)
    return create_model(model_name, __base__=base, **fields)


def _checked(name: str, bounds: Bounds):
    """The range check of the config field itself (Bounds.check), so a value out of range gets the
    same message over HTTP as from the CLI and the config dataclass."""

    def check(value: Any) -> Any:
        if bounds.optional and value == 0:  # 0: none, as on the CLI
            return value
        try:
            bounds.check(name, value)
        except ConfigError as exc:
            raise PydanticCustomError("out_of_range", str(exc)) from None
        return value

    return check


def _schema_range(bounds: Bounds) -> dict[str, float]:
    """The range in the OpenAPI document (JSON Schema keywords); enforced by `_checked`."""
    if bounds.optional:
        low = {"minimum": 0}
    else:
        low = {"minimum": bounds.ge} if bounds.ge is not None else {}
        low |= {"exclusiveMinimum": bounds.gt} if bounds.gt is not None else {}
    high = {"maximum": bounds.le} if bounds.le is not None else {}
    high |= {"exclusiveMaximum": bounds.lt} if bounds.lt is not None else {}
    return low | high


def form_values(form: BaseModel, cls: type, names: Iterable[str]) -> dict[str, Any]:
    """Config keyword arguments from a form: unset fields left out, 0 on an optional field ->
    None."""
    declared = options_of(cls)
    out = {}
    for name in names:
        value = getattr(form, name)
        if value is not None:
            out[name] = None if declared[name][1].optional and value == 0 else value
    return out
