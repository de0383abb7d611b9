"""On/off environment variables (``TAYLORSHIFT_CALIBRATION``, ``TAYLORSHIFT_DEBUG``): one parser, one set
of accepted values.

A switch is on for ``1``, ``on``, ``true``, ``yes`` and off for ``0``, ``off``, ``false``, ``no`` (any case,
surrounding spaces ignored); unset or empty means its default. Any other value is an error: a typo such as
``TAYLORSHIFT_CALIBRATION=of`` must not silently mean the opposite of what was meant.
"""

from __future__ import annotations

import os

ON = ("1", "on", "true", "yes")
OFF = ("0", "off", "false", "no")


def parse_switch(name: str, value: str | None, default: bool) -> bool:
    """The boolean meaning of ``value`` (the text of environment variable ``name``).

    Raises:
        ValueError: ``value`` is none of the accepted spellings; the message names the variable and them.
    """
    text = (value or "").strip().lower()
    if not text:
        return default
    if text in ON:
        return True
    if text in OFF:
        return False
    raise ValueError(f"{name}={value!r} is not a valid switch: use one of {', '.join(ON)} (on) or "
                     f"{', '.join(OFF)} (off), or leave it unset")


def env_switch(name: str, default: bool) -> bool:
    """:func:`parse_switch` of the environment variable ``name``."""
    return parse_switch(name, os.environ.get(name), default)
