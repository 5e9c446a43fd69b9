"""`lsst.pex.config` views of the core's configuration dataclasses.

The core describes each group of settings once, as a frozen dataclass whose
``__post_init__`` validates it (`FrameConfig`, `PriorConfig`,
`EncoderConfig`, ...).  The tasks nest the classes made here, which mirror
those dataclasses field by field: same names, types, defaults and
documentation (read from the dataclass's numpydoc ``Attributes`` section),
so that a setting has one source, ``-c label:section.field=value`` reaches
it, and a training YAML file's sections map one-to-one onto a task's nested
configs.  Validation is the core's: `CoreConfig.validate` builds the
dataclass and reports its error as a `FieldValidationError`.
"""

from __future__ import annotations

__all__ = [
    "AutoencoderPexConfig",
    "AutoencoderTrainingPexConfig",
    "ConditionsPexConfig",
    "CoreConfig",
    "EncoderPexConfig",
    "FramePexConfig",
    "ModelFitPexConfig",
    "PriorPexConfig",
    "SimulatorPexConfig",
    "TrainingPexConfig",
    "core_config_class",
]

import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterable
from typing import Any, ClassVar

from lsst.pex.config import Config, Field, FieldValidationError, ListField

from ..deblend import ModelFitConfig
from ..inference import FrameConfig
from ..network import AutoencoderConfig, EncoderConfig
from ..simulation import PriorConfig, SimulatorConfig
from ..survey import SurveyConditions
from ..training import AutoencoderTrainingConfig, TrainingConfig

_SECTION = re.compile(r"^(?:Attributes|Parameters)\n-+\n(.*?)(?=^\S[^\n]*\n-+\n|\Z)", re.M | re.S)


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> its description in the numpydoc ``Attributes`` section of ``cls``'s docstring.

    An entry may name several fields (``a, b``); they share its description.
    """
    match = _SECTION.search(inspect.getdoc(cls) or "")
    docs: dict[str, list[str]] = {}
    names: list[str] = []
    for line in (match.group(1) if match else "").splitlines():
        if line and not line[0].isspace():
            names = [name.strip() for name in line.split(":")[0].split(",")]
            for name in names:
                docs[name] = []
        else:
            for name in names:
                docs[name].append(line.strip())
    return {name: " ".join(part for part in lines if part) for name, lines in docs.items()}


class CoreConfig(Config):
    """A pex_config mirror of one core configuration dataclass (made by `core_config_class`)."""

    core_class: ClassVar[type]
    """The dataclass this config mirrors."""

    def to_core(self, **overrides: Any) -> Any:
        """The core dataclass with this config's values (and ``overrides``).

        Raises
        ------
        ValueError
            When the core dataclass rejects the values.
        """
        values: dict[str, Any] = {}
        for name, field in self._fields.items():
            value = getattr(self, name)
            values[name] = tuple(value) if isinstance(field, ListField) and value is not None else value
        return self.core_class(**{**values, **overrides})

    def from_core(self, core: Any) -> None:
        """Set every field from an instance of the core dataclass."""
        for name in self._fields:
            value = getattr(core, name)
            setattr(self, name, list(value) if isinstance(value, tuple) else value)

    def validate(self) -> None:
        super().validate()
        _validate_by_building(self)


def _validate_by_building(config: CoreConfig | ConditionsPexConfig) -> None:
    """Validate a mirror by building its core object; the core's error is reported on the field its
    message names first (the core's messages start with ``name=value``)."""
    try:
        config.to_core()
    except (TypeError, ValueError) as err:
        message = str(err)
        mentions = [
            (match.start(), name)
            for name in config._fields
            if (match := re.search(rf"\b{name}\b", message)) is not None
        ]
        field = config._fields[min(mentions)[1]] if mentions else next(iter(config._fields.values()))
        raise FieldValidationError(field, config, message) from err


def _pex_field(annotation: Any, default: Any, doc: str) -> Field:
    """A pex_config field for a dataclass field of type ``annotation``."""
    optional = False
    if isinstance(annotation, types.UnionType | typing._UnionGenericAlias):  # type: ignore[attr-defined]
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"Cannot map the union {annotation} onto a config field.")
        annotation = members[0]
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        item = args[0]
        length = None if len(args) == 2 and args[1] is Ellipsis else len(args)
        return ListField(
            doc=doc,
            dtype=item,
            default=None if default is None else list(default),
            optional=optional,
            length=length,
        )
    if annotation not in (bool, int, float, str):
        raise TypeError(f"Cannot map a field of type {annotation} onto a config field.")
    return Field(doc=doc, dtype=annotation, default=default, optional=optional)


def core_config_class(core: type, name: str, module: str, exclude: Iterable[str] = ()) -> type[CoreConfig]:
    """Make the pex_config class that mirrors a core configuration dataclass.

    Parameters
    ----------
    core
        A dataclass whose fields are bool, int, float, str, tuples of them,
        or optional versions of those.
    name
        Name of the new class; it is also set as an attribute of ``module``,
        which must be the module the caller assigns it in, so that configs
        pickle (``pipetask run -j``).
    module
        The ``__name__`` of that module.
    exclude
        Fields the task sets itself (they keep the dataclass default unless
        `CoreConfig.to_core` is given them).

    Raises
    ------
    ValueError
        When a field has no description in the dataclass's docstring.
    """
    excluded = set(exclude)
    hints = typing.get_type_hints(core)
    docs = attribute_docs(core)
    namespace: dict[str, Any] = {"core_class": core, "__module__": module, "__qualname__": name}
    namespace["__doc__"] = f"Configuration mirroring `{core.__name__}`; see its documentation."
    for field in dataclasses.fields(core):
        if field.name in excluded:
            continue
        if not docs.get(field.name):
            raise ValueError(f"{core.__name__}.{field.name} has no description in the docstring.")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        namespace[field.name] = _pex_field(hints[field.name], default, docs[field.name])
    config_class = type(name, (CoreConfig,), namespace)
    setattr(sys.modules[module], name, config_class)
    return config_class


class ConditionsPexConfig(Config):
    """The ``conditions`` section of a training run: a survey's nominal conditions in a band
    (`SurveyConditions.from_survey`), each of which may be overridden."""

    survey = Field[str](
        doc="Survey whose nominal conditions (surveycodex) the simulations use.", default="LSST"
    )
    band = Field[str](
        doc="Filter band of the simulations; with bands, the model's nominal band (one of them).", default="r"
    )
    bands = ListField[str](
        doc="Bands to train one model for: each training image draws its band (that band's nominal "
        "conditions, with the overrides set here) among them. Empty: band alone.",
        default=[],
    )

    def to_core(self, band: str | None = None, **overrides: Any) -> SurveyConditions:
        """The survey's conditions in ``band`` (default this config's) with the fields set here (and
        ``overrides``) replaced.

        Raises
        ------
        ValueError
            For an unknown survey or band, or values the conditions reject.
        """
        return SurveyConditions.from_survey(
            self.survey, band or self.band, **{**self._overrides(), **overrides}
        )

    def band_conditions(self, **overrides: Any) -> tuple[SurveyConditions, ...]:
        """The conditions of each of ``bands`` (empty when it is), with the same overrides as `to_core`.

        Raises
        ------
        ValueError
            For an unknown band, or values the conditions reject.
        """
        values = {**self._overrides(), **overrides}
        return tuple(SurveyConditions.from_survey(self.survey, band, **values) for band in self.bands or ())

    def _overrides(self) -> dict[str, Any]:
        """The condition fields set here (not None)."""
        names = [name for name in self._fields if name not in ("survey", "band", "bands")]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def validate(self) -> None:
        super().validate()
        _validate_by_building(self)
        bands = list(self.bands or ())
        problem = None
        if len(set(bands)) != len(bands):
            problem = f"bands={bands} lists a band more than once"
        elif bands and self.band not in bands:
            problem = f"band={self.band!r} (the nominal band) is not among bands={bands}; list it or pick one"
        else:
            try:
                self.band_conditions()
            except ValueError as err:
                problem = str(err)
        if problem is not None:
            raise FieldValidationError(type(self).bands, self, problem)


def _add_condition_overrides() -> None:
    """One optional field per `SurveyConditions` field besides survey and band (None: nominal)."""
    hints = typing.get_type_hints(SurveyConditions)
    docs = attribute_docs(SurveyConditions)
    for field in dataclasses.fields(SurveyConditions):
        if field.name in ("survey", "band"):
            continue
        doc = docs.get(field.name) or field.name.replace("_", " ")
        override = Field(
            doc=f"{doc} None: the survey's nominal value.",
            dtype=hints[field.name],
            default=None,
            optional=True,
        )
        setattr(ConditionsPexConfig, field.name, override)


_add_condition_overrides()

# The core configs that the tasks nest, one mirror each.
FramePexConfig = core_config_class(FrameConfig, "FramePexConfig", __name__)
ModelFitPexConfig = core_config_class(ModelFitConfig, "ModelFitPexConfig", __name__)
PriorPexConfig = core_config_class(PriorConfig, "PriorPexConfig", __name__)
SimulatorPexConfig = core_config_class(SimulatorConfig, "SimulatorPexConfig", __name__)
EncoderPexConfig = core_config_class(EncoderConfig, "EncoderPexConfig", __name__)
TrainingPexConfig = core_config_class(TrainingConfig, "TrainingPexConfig", __name__)
AutoencoderPexConfig = core_config_class(AutoencoderConfig, "AutoencoderPexConfig", __name__)
AutoencoderTrainingPexConfig = core_config_class(
    AutoencoderTrainingConfig, "AutoencoderTrainingPexConfig", __name__
)
