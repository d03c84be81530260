"""What a DELETE names: each deletion target says it (a digest, or one tag alone), decided when it is
made from the plan and its snapshot, never later from what a string looks like.

A sha512 digest is a digest; something listed where a digest belongs that is not one (a child
"digest" `v1.0`, the name of a real tag) is never a target, and neither is a planned tag whose
name could make a DELETE path name something else (security review, finding 7).
"""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.sweep.targets import DIGEST, SKIPPED, TAG, Target, deletion_targets


def frames(plan: list[tuple], tags: list[tuple], manifests: list[tuple], children: list[tuple] = ()):
    return (pd.DataFrame(plan, columns=["repository", "tag", "digest", "kind", "action", "size"]),
            pd.DataFrame(tags, columns=["repository", "tag", "digest", "gone"]),
            pd.DataFrame(manifests, columns=["repository", "digest", "kind", "size", "subject"]),
            pd.DataFrame(list(children), columns=["repository", "index_digest", "child_digest"]))


def test_a_sha512_digest_in_a_plan_is_deleted_as_a_digest_not_as_a_tag():
    d = "sha512:" + "ab" * 64
    targets, skipped = deletion_targets(*frames([("app", "old", d, "image", "delete", 10)],
                                                [("app", "old", d, False)], [("app", d, "image", 10, None)]))
    assert [(t.ref, t.ref_kind, t.tags) for t in targets] == [(d, DIGEST, ("old",))] and skipped == []


def test_an_index_child_that_is_not_a_digest_is_never_a_target():
    index, child = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    targets, _ = deletion_targets(*frames(
        [("app", "junk", index, "index", "delete", 10)], [("app", "junk", index, False), ("app", "v1.0", child, False)],
        [("app", index, "index", 10, None)], [("app", index, "v1.0"), ("app", index, child)]))
    # `v1.0` (a real, kept tag's name) listed as a platform manifest: a DELETE naming it would
    # delete that tag on a registry that deletes by tag.
    assert [(t.ref, t.ref_kind) for t in targets] == [(index, DIGEST)]


def test_a_planned_tag_that_is_not_a_tag_name_is_kept_and_said_why():
    d = "sha256:" + "3" * 64
    evil = "../manifests/sha256:" + "4" * 64
    targets, skipped = deletion_targets(*frames(
        [("app", "stable", d, "image", "keep", 10), ("app", "old", d, "image", "delete", 10),
         ("app", evil, d, "image", "delete", 10)],
        [("app", t, d, False) for t in ("stable", "old", evil)], [("app", d, "image", 10, None)]))
    assert [(t.ref, t.ref_kind) for t in targets] == [("old", TAG)]
    assert [(o.ref, o.ref_kind, o.status, o.detail) for o in skipped] == [
        (evil, TAG, SKIPPED, f"{evil!r} is not a valid tag name: a DELETE naming it could name something else")]


@pytest.mark.parametrize("ref, ref_kind, digest", [
    ("v1.0", DIGEST, "v1.0"),                          # a tag posing as a digest
    ("sha256:" + "5" * 64, TAG, "sha256:" + "5" * 64),  # a digest posing as a lone tag
    ("a/../b", TAG, "sha256:" + "5" * 64),             # a path posing as a tag
])
def test_a_target_that_would_name_something_else_cannot_be_made(ref, ref_kind, digest):
    with pytest.raises(ValueError, match=f"not a {ref_kind} target"):
        Target(repository="app", ref=ref, digest=digest, kind="image", ref_kind=ref_kind)
