"""werf's `cleanup:` section as a typed policy model, plus regsweep's own keys: `unlinkedImages`
and the two rules only stored history makes possible (`keepImagesSeenInUseWithin`,
`firstSeenAsBuildTime`, tasks/plan/history_rules.py).

The YAML is accepted verbatim (camelCase keys). werf lets the last policy that selects a
reference decide its imagesPerReference; regsweep keeps the union of every policy instead, so
the order of `keepPolicies` never changes a plan.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from tasks.common.units import parse_duration


def compile_reference_pattern(value: str) -> re.Pattern[str]:
    """`/re/` is a regex, anything else a literal; both anchored like werf's."""
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        body = value[1:-1]
    else:
        body = re.escape(value)
    try:
        return re.compile(f"^(?:{body})$")
    except re.error as e:
        raise ValueError(f"bad regular expression {value!r}: {e}") from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


#: Bounds that keep counts and windows inside the plan's int64 arithmetic (µs clocks, ranks).
MAX_COUNT = 10**9
MAX_WITHIN = timedelta(days=36_500)


def _check_count(v: int | None) -> int | None:
    if v is not None and v < -1:
        raise ValueError(f"{v} is not a count (use -1 for all)")
    if v is not None and v > MAX_COUNT:
        raise ValueError(f"{v} is too large (at most {MAX_COUNT:,}, or -1 for all)")
    return v


def _within(v):
    if v is None:
        return None
    d = parse_duration(v)
    if d > MAX_WITHIN:
        raise ValueError(f"{v!r} is longer than 100 years")
    return d


#: `last`: a count, -1 for all; `in`: a Go duration such as 168h; `operator`: how the two combine.
Count = Annotated[int | None, AfterValidator(_check_count)]
Within = Annotated[timedelta | None, BeforeValidator(_within)]
Operator = Literal["And", "Or"]


class Limit(_Strict):
    """Which references a policy selects, by reference date."""

    last: Count = Field(None, description="The N newest references (-1 = all).")
    in_: Within = Field(None, alias="in", description="References dated within this duration of now, e.g. 168h.")
    operator: Operator = Field("And", description="How `last` and `in` combine.")


class ImagesPerReference(_Strict):
    """How many images of each selected reference are kept."""

    last: Count = Field(None, description="The N newest images (-1 = all; omitted = 1, with or without `in`).")
    in_: Within = Field(None, alias="in", description="Images of commits within this duration of now.")
    operator: Operator = Field("And", description="How `last` and `in` combine.")


class References(_Strict):
    branch: str | None = Field(None, description="Branch name: a literal or /regex/.")
    tag: str | None = Field(None, description="Git tag name: a literal or /regex/.")
    limit: Limit | None = Field(None, description="Which of the matching references to select.")

    @field_validator("branch", "tag")
    @classmethod
    def _pattern(cls, v):
        if v is not None:
            compile_reference_pattern(v)
        return v

    @model_validator(mode="after")
    def _one(self):
        if (self.branch is None) == (self.tag is None):
            raise ValueError("exactly one of `branch` or `tag` is required")
        return self

    @property
    def kind(self) -> Literal["branch", "tag"]:
        return "branch" if self.branch is not None else "tag"

    @property
    def pattern(self) -> re.Pattern[str]:
        return compile_reference_pattern(self.branch if self.branch is not None else self.tag)


class KeepPolicy(_Strict):
    references: References
    imagesPerReference: ImagesPerReference | None = Field(
        None, description="Images kept per selected reference (default: the newest one).")


def default_keep_policies() -> list[KeepPolicy]:
    """werf's defaults as its code has them (its docs differ)."""
    return [
        KeepPolicy.model_validate({"references": {"tag": "/.*/", "limit": {"last": 10}}}),
        KeepPolicy.model_validate({
            "references": {"branch": "/.*/", "limit": {"last": 10, "in": "168h", "operator": "And"}},
            "imagesPerReference": {"last": 2, "in": "168h", "operator": "And"},
        }),
        KeepPolicy.model_validate({
            "references": {"branch": "/^(main|master|staging|production)$/"},
            "imagesPerReference": {"last": 10},
        }),
    ]


class CleanupPolicy(_Strict):
    """werf.yaml's `cleanup:` section, accepted verbatim, plus `unlinkedImages`."""

    keepPolicies: list[KeepPolicy] | None = Field(
        None, description="werf keep policies; omitted = werf's defaults.")
    keepImagesBuiltWithinLastNHours: float = Field(
        2, ge=0, le=1_000_000, allow_inf_nan=False,   # a window past ~114 years overflows the plan's µs clock
        description="Keep images built within this many hours of the snapshot.")
    disableKubernetesBasedPolicy: bool = Field(False, description="Do not keep images in use in Kubernetes (and do not scan clusters).")
    disableGitHistoryBasedPolicy: bool = Field(False, description="Do not apply git keep policies (no git source needed).")
    disableBuiltWithinLastNHoursPolicy: bool = Field(False, description="Do not keep freshly built images.")
    unlinkedImages: Literal["keep", "delete"] = Field(
        "keep", description="Images linked to no commit: keep (default) or delete.")
    # regsweep's own, read from stored snapshots (tasks/plan/history_rules.py); off by default
    keepImagesSeenInUseWithin: Within = Field(
        None, description="Keep images that any stored snapshot within this duration of the snapshot "
                          "saw in use in a workload or in a Helm revision, e.g. 168h (default: off).")
    firstSeenAsBuildTime: bool = Field(
        False, description="Where an image records no trustworthy build time (none, or before 2013) and the "
                           "registry no push time, the first snapshot that listed it stands in as its build "
                           "time for keepImagesBuiltWithinLastNHours.")

    @property
    def effective_keep_policies(self) -> list[KeepPolicy]:
        """The policies in force: werf's defaults when `keepPolicies` is absent or empty (as in werf)."""
        return list(self.keepPolicies) if self.keepPolicies else default_keep_policies()

    @property
    def uses_history(self) -> bool:
        """Whether a plan needs earlier snapshots besides the evaluated one (tasks/plan/history_rules.py)."""
        return self.keepImagesSeenInUseWithin is not None or self.firstSeenAsBuildTime

    def recorded(self) -> dict:
        """The policy as plans record it. Keys added after plans were first hashed appear only when
        set, so a configuration that does not use them keeps its hash (and old plans stay valid)."""
        out = self.model_dump(mode="json", by_alias=True)
        for key, default in _ADDED_KEYS.items():
            if out.get(key) == default:
                del out[key]
        return out

    def digest(self) -> str:
        """A stable hash naming this policy in plans."""
        blob = json.dumps(self.recorded(), sort_keys=True)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


#: Keys added after policy hashes were first stored, with their defaults (see `recorded`).
_ADDED_KEYS = {"keepImagesSeenInUseWithin": None, "firstSeenAsBuildTime": False}
