"""Phone numbers in E.164 (`+46701234567`), for the num_country setting.

Pure Python; `phonenumbers` (Debian python3-phonenumbers, PyPI phonenumbers) is imported
only when a number is normalised, so a daemon that never sets num_country never loads
its metadata (several MB: it matters on a Raspberry Pi).

The test is deliberately "could this be a number" (its length fits the country's
numbering plan) rather than "is this range allocated": the metadata of a distribution's
phonenumbers ages, and a number in a range allocated since must still be sendable.
"""

from __future__ import annotations

import re

from websmsd.text import shown

__all__ = ["NumberError", "normalise", "number_key"]


class NumberError(ValueError):
    """The text cannot be a phone number; str() says why, in one line."""


# What people and ITSPs write in a number: digits, one leading "+", and the usual
# separators.  Letters are refused: phonenumbers would read 1-800-FLOWERS as digits,
# but here a letter means an alphanumeric sender name or a mistake, not a vanity number.
_NUMBER_TEXT = re.compile(r"\+?[0-9 ()./-]+")
_MAX_LENGTH = 64


_SEPARATORS = re.compile(r"[ ()./-]")


def number_key(number: str) -> str:
    """How two spellings of one number compare: the conversation view's key.

    +12025550160, 12025550160, 0012025550160 and "+1 (202) 555-0160" give "12025550160";
    a national spelling (0701234567) stays apart, as no country is known here.  Text that
    is not a number (an alphanumeric sender such as "VODAFONE", an interface name) is
    its own key, in lower case.
    """
    text = number.strip()
    compact = _SEPARATORS.sub("", text)
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    else:
        digits = compact
    if digits.isdigit() and digits.isascii():
        return digits
    return text.lower()


def normalise(number: str, country: str) -> str:
    """`number` in E.164 with its "+", read as dialled in `country` (ISO 3166, e.g. "SE").

    Accepts international numbers (`+46 70 123 45 67`, or `0046701234567` with the
    country's international prefix), national ones (`070-123 45 67`), and numbers with
    the country's own code but no "+" (`46701234567`).  A number that cannot be one of
    `country` but is a valid number abroad when read with a "+" (`447911123456` for
    US, as some ITSPs write numbers) is taken as that.  The national reading needs only
    a possible length; the reading abroad must be valid (so `447911123456` for SE,
    where 12 digits can be a national number, is +46447911123456).

    Raises NumberError, saying why, when the text cannot be a number: empty, letters,
    no known country code, too short or too long for its country, a local number
    without its area code.
    """
    if not isinstance(number, str):
        raise NumberError(f"{type(number).__name__} is not a phone number")
    text = number.strip()
    if not text:
        raise NumberError("the number is empty")
    if len(text) > _MAX_LENGTH or not _NUMBER_TEXT.fullmatch(text):
        raise NumberError(
            f"{shown(text)} is not a phone number"
            " (digits, a leading + and the separators space ( ) - . / only)"
        )
    import phonenumbers  # lazily: see the module docstring

    region = (country or "").strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise NumberError(f"{country!r} is not a country code phonenumbers knows (e.g. US, GB, SE)")

    # As dialled in `region` (phonenumbers itself reads "+...", the country's
    # international prefix, its trunk prefix, and its own country code without "+").
    try:
        national = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        national, problem = None, _parse_problem(text, exc)
    else:
        reason = phonenumbers.is_possible_number_with_reason(national)
        if reason == phonenumbers.ValidationResult.IS_POSSIBLE:
            return _e164(phonenumbers, national)
        problem = _length_problem(phonenumbers, text, national, reason)
    # International without "+" (as some ITSPs write numbers): only when the number
    # cannot be one of `region`, and only when it is a valid number there, so that a
    # national number in a range newer than the metadata never goes abroad.
    digits = re.sub(r"[^0-9]", "", text)
    if not text.startswith("+") and not digits.startswith("0"):
        try:
            abroad = phonenumbers.parse("+" + digits, None)
        except phonenumbers.NumberParseException:
            abroad = None
        if abroad is not None and phonenumbers.is_valid_number(abroad):
            return _e164(phonenumbers, abroad)
    raise NumberError(problem)


def _e164(phonenumbers, parsed) -> str:  # type: ignore[no-untyped-def]
    if parsed.extension:
        raise NumberError("an extension cannot be written in E.164")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _parse_problem(text: str, exc: Exception) -> str:
    import phonenumbers

    kind = getattr(exc, "error_type", None)
    reasons = {
        phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "has no known country code",
        phonenumbers.NumberParseException.NOT_A_NUMBER: "is not a phone number",
        phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "is too short",
        phonenumbers.NumberParseException.TOO_SHORT_NSN: "is too short",
        phonenumbers.NumberParseException.TOO_LONG: "is too long",
    }
    return f"{shown(text)} {reasons.get(kind, 'is not a phone number')}"


def _length_problem(phonenumbers, text: str, parsed, reason: int) -> str:  # type: ignore[no-untyped-def]
    result = phonenumbers.ValidationResult
    code = f"+{parsed.country_code}"
    why = {
        result.INVALID_COUNTRY_CODE: "has no known country code",
        result.TOO_SHORT: f"is too short for a {code} number",
        result.TOO_LONG: f"is too long for a {code} number",
        result.INVALID_LENGTH: f"has no valid length for a {code} number",
        result.IS_POSSIBLE_LOCAL_ONLY: "is a local number: write it with its area code",
    }.get(reason, "is not a phone number")
    return f"{shown(text)} {why}"
