"""Request bodies to job specs: malformed JSON is a 400, anything else wrong a 422.

Bodies are parsed here rather than by the framework so the two cases stay
apart and every field error names its place (`["jobs", 3, "payload", "url"]`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from api.errors import InvalidRequest, MalformedRequest, field_errors
from ledger import InvalidJob, JobSpec, Registry, Submission, to_spec, utc_now

MAX_BATCH = 1000
MAX_DEPTH = 32
Item = tuple[JobSpec, str]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The document, if it is JSON that can be stored as it is (else 400)."""
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise MalformedRequest(f"malformed JSON: {e}") from None
    except RecursionError:
        raise MalformedRequest("malformed JSON: nested too deeply") from None
    _check_storable(document)
    return document


def _check_storable(document: Any) -> None:
    """No nesting deeper than MAX_DEPTH and no lone surrogates (`"\\ud800"`): valid JSON
    text, but neither can be stored or answered back."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedRequest(f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
            stack.extend((k, depth) for k in value)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                raise MalformedRequest("malformed JSON: a string holds a lone surrogate") from None


def _errors(e: ValidationError, prefix: Sequence[str | int] = ()) -> list[dict[str, Any]]:
    found = e.errors(include_url=False, include_context=False, include_input=False)
    return field_errors([{**err, "loc": [*prefix, *err["loc"]]} for err in found])


def to_item(
    document: Any,
    *,
    org: str,
    registry: Registry,
    retry_delays_s: tuple[float, ...] | None,
    prefix: Sequence[str | int] = (),
) -> Item:
    """One submission, validated against its type; raises InvalidRequest with field errors."""
    if not isinstance(document, dict):
        raise InvalidRequest(
            "a job must be a JSON object",
            [{"loc": list(prefix), "msg": "expected an object", "type": "dict_type"}],
        )
    try:
        submission = Submission.model_validate(document)
        return to_spec(
            submission, org=org, registry=registry, now=utc_now(), retry_delays_s=retry_delays_s
        )
    except ValidationError as e:
        raise InvalidRequest("invalid job", _errors(e, prefix)) from None
    except InvalidJob as e:
        errors = [{**err, "loc": [*prefix, *err.get("loc", ())]} for err in e.errors]
        raise InvalidRequest(str(e), field_errors(errors)) from None
    except OverflowError:  # a run_at at the very edge of the calendar, in a far time zone
        raise InvalidRequest(
            "run_at is out of range",
            [{"loc": [*prefix, "run_at"], "msg": "out of range", "type": "value_error"}],
        ) from None


def to_batch(
    document: Any,
    *,
    org: str,
    registry: Registry,
    retry_delays_s: tuple[float, ...] | None,
) -> list[Item]:
    """Every job of `{"jobs": [...]}`, or InvalidRequest listing all that are wrong."""
    if not isinstance(document, dict) or set(document) != {"jobs"}:
        raise InvalidRequest(
            'a batch is {"jobs": [...]}',
            [{"loc": ["jobs"], "msg": 'expected {"jobs": [...]}', "type": "value_error"}],
        )
    jobs = document["jobs"]
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= MAX_BATCH:
        raise InvalidRequest(
            f"jobs must be a list of 1 to {MAX_BATCH} jobs",
            [{"loc": ["jobs"], "msg": f"expected 1 to {MAX_BATCH} jobs", "type": "value_error"}],
        )
    items: list[Item] = []
    errors: list[dict[str, Any]] = []
    keys: set[str] = set()
    for i, job in enumerate(jobs):
        try:
            item = to_item(
                job, org=org, registry=registry, retry_delays_s=retry_delays_s, prefix=["jobs", i]
            )
        except InvalidRequest as e:
            errors.extend(e.extra)
            continue
        key = item[0].idempotency_key
        if key is not None:
            if key in keys:
                errors.append(
                    {
                        "loc": ["jobs", i, "idempotency_key"],
                        "msg": "idempotency key repeated within the batch",
                        "type": "value_error",
                    }
                )
            keys.add(key)
        items.append(item)
    if errors:
        raise InvalidRequest(f"{len(errors)} invalid field(s); nothing was submitted", errors)
    return items
