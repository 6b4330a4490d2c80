"""Message templates: moved to :mod:`shared.templates` (the scheduler's journeys render them too).

This module keeps ingest's imports working.
"""

from shared.templates import *  # noqa: F403
from shared.templates import (  # noqa: F401
    _CONTROL,
    CONTACT_FIELDS,
    DEFAULT_OPT_OUT_LANGUAGE,
    LANGUAGE_RE,
    MAX_BODY,
    MAX_DEFAULT,
    MAX_RENDERED,
    MAX_VALUE,
    MAX_VARIANTS,
    OPT_OUT,
    PLACEHOLDER,
    SAMPLE_CONTACT,
    SENDER_RE,
    Purpose,
    Rendered,
    Template,
    TemplateError,
    choose_language,
    field_value,
    has_opt_out,
    opt_out_text,
    placeholder_errors,
    primary,
    render,
    validate,
)
