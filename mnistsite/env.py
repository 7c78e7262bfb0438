"""Reading settings from the environment: a value that cannot be used stops the start, naming its variable."""
from __future__ import annotations

import builtins
import math
import re
from collections.abc import Iterable

import environ
from django.core.exceptions import ImproperlyConfigured


class StrictEnv(environ.Env):
    """django-environ's reader, but a number or switch it cannot read stops the start, naming the variable.

    django-environ's own raises a bare ValueError that names neither, reads any word it does not know as false
    (SECURE_SSL_REDIRECT=flase), and takes the digits out of a float (5s as 5).
    """

    SWITCHES = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

    def int(self, var, default=environ.Env.NOTSET, *, least=None, most=None):
        return self._read(var, default, builtins.int, "a whole number", least=least, most=most)

    def float(self, var, default=environ.Env.NOTSET, *, least=None, most=None):
        return self._read(var, default, _finite_float, "a number", least=least, most=most)

    def bool(self, var, default=environ.Env.NOTSET):
        return self._read(var, default, lambda raw: self.SWITCHES[raw.strip().lower()],
                          "true or false (or yes/no, on/off, 1/0)")

    def list(self, var, cast=None, default=environ.Env.NOTSET):
        # django-environ keeps the spaces around each comma: "a.example.com, b.example.com" would name the host
        # " b.example.com", which no request's Host header matches.
        if var not in self.ENVIRON:
            return super().list(var, cast=cast, default=default)
        items = [item.strip() for item in self.get_value(var, cast=str).split(",")]
        return [cast(item) if cast else item for item in items if item]

    def rate(self, var: str, default: str) -> str:
        rate = self.str(var, default=default)
        rate_check(name=var, rate=rate)
        return rate

    def _read(self, var, default, parse, expected, *, least=None, most=None):
        if var not in self.ENVIRON:
            return self.get_value(var, default=default)
        raw = self.get_value(var, cast=str)
        try:
            value = parse(raw)
        except (ValueError, KeyError):
            empty = "; unset it for the default" if not raw.strip() else ""
            raise ImproperlyConfigured(f"{var}={raw!r} is not {expected}{empty}.") from None
        if (least is not None and value < least) or (most is not None and value > most):
            bounds = f"from {least} to {most}" if most is not None else f"{least} or more"
            raise ImproperlyConfigured(f"{var} must be {bounds} (it is {value}).")
        return value


def _finite_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


_RATE_PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


# A period may name a number of its units ("15minute", "10s"): "5/15minute" is five every quarter of an hour.
_RATE_PERIOD = re.compile(r"([0-9]*)([smhd])")


def rate_parse(rate: str) -> tuple[int, float] | None:
    """A rate setting ("600/minute", "10/hour", "5/15minute") as (count, seconds), or None when it is empty (no limit).

    Raises ValueError for anything else, a count below 1 included: the settings refuse such a rate at start.
    """
    if not rate:
        return None
    count, _, period = rate.partition("/")
    # Only the unit's first letter counts ("600/mins" is per minute), as in Django REST framework's throttles.
    unit = _RATE_PERIOD.match(period)
    units = int(unit.group(1) or 1) if unit else 0
    if int(count) < 1 or units < 1:
        raise ValueError(f"not a rate: {rate!r}")
    return int(count), units * _RATE_PERIODS[unit.group(2)]


def rate_check(*, name: str, rate: str) -> None:
    """Refuse a rate the throttles could not read, or one that would refuse everything; empty means no limit."""
    try:
        rate_parse(rate)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={rate!r} is not a rate: a count of 1 or more, a slash and a period, second, minute, hour or day, "
            "or a number of them (e.g. 10/hour, 600/minute, 5/15minute), or empty for no limit."
        ) from None


UNREADABLE_URL = (
    "{name} could not be read: percent-encode @ / : ? and # in its user and password (%40 %2F %3A %3F %23)."
)


def url_credentials_check(*, name: str, url: str) -> None:
    """Refuse a URL whose user or password holds an unencoded @ / ? or #, without quoting any of it.

    Such a character ends the host part early (or starts it late), so the URL would be read with another host,
    database or password, and a connection error would then quote a piece of the password.
    """
    scheme, separator, rest = url.partition("://")
    # A file path follows, where @ is an ordinary character.
    if not separator or scheme in {"sqlite", "spatialite", "filecache"}:
        return
    host_end = min((index for index in map(rest.find, "/?#") if index >= 0), default=len(rest))
    authority, after = rest[:host_end], rest[host_end:]
    path = after.split("?", 1)[0].split("#", 1)[0]
    # An @ after a ? or # ends a password that held one, unless a query parameter (name=value) holds it.
    cut_password = "@" in after and "@" not in authority and "=" not in after[len(path) :].split("@", 1)[0]
    if authority.count("@") > 1 or "@" in path or cut_password:
        raise ImproperlyConfigured(UNREADABLE_URL.format(name=name))


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_+.-]*")


def url_scheme_check(*, name: str, url: str, schemes: Iterable[str], example: str) -> None:
    """Refuse a URL without a scheme, or with one not among ``schemes``, quoting nothing but a well-formed scheme.

    What follows the scheme holds the password; without a scheme, what looks like one may be the user name.
    """
    scheme, separator, _ = url.partition("://")
    if not separator or not _SCHEME.fullmatch(scheme):
        raise ImproperlyConfigured(f"{name} must start with its scheme, e.g. {example}.")
    if scheme not in schemes:
        raise ImproperlyConfigured(
            f"{name} has an unknown scheme {scheme!r}; use one of {', '.join(f'{known}://' for known in schemes)}."
        )
