"""Image references as written in manifests, normalised so they can be matched to a registry.

Parsing follows Docker's distribution/reference grammar through `docker-image-py` (a port of
`ParseNormalizedNamed`): `nginx` is `docker.io/library/nginx:latest`, a first component with a
`.` or `:` or equal to `localhost` is a host, repositories must be lowercase. On top of that,
hosts are lowercased and their default ports dropped, and Docker Hub's other spellings
(`index.docker.io`, `registry-1.docker.io`) are `docker.io`, so that every spelling of one
image compares equal. Repository globs (`registry.repositories`) are read here too.
"""

from __future__ import annotations

import functools

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from docker_image.reference import InvalidReference, Reference

if TYPE_CHECKING:
    import pandas

DOCKER_HUB = "docker.io"
#: Every spelling of Docker Hub's host, in image references and in docker config keys alike.
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_DIGEST = re.compile(r"^(?P<alg>[a-z0-9]+(?:[.+_-][a-z0-9]+)*):(?P<hex>[a-fA-F0-9]{32,})$")
_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference: `host/repository[:tag][@digest]`."""

    host: str
    repository: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        s = f"{self.host}/{self.repository}"
        if self.tag is not None:
            s += f":{self.tag}"
        if self.digest is not None:
            s += f"@{self.digest}"
        return s


def _valid_digest(d: str) -> bool:
    m = _DIGEST.match(d)
    if not m:
        return False
    want = _DIGEST_HEX_LEN.get(m["alg"])
    return want is None or len(m["hex"]) == want


# The distribution grammar (distribution/reference): what a registry may name a repository or a tag.
# Names from a registry go into URL paths; `x/../app` or a tag `../manifests/sha256:<kept>` would
# reach a different resource once the path is normalised, so anything else is refused unread.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY_NAME = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
# Go's \w is ASCII; Python's would let any Unicode letter through.
_TAG_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def is_repository_name(name: object) -> bool:
    """Whether `name` is a repository name of the distribution grammar (lowercase path components
    joined by `/`, separated inside by `.`, `_`, `__` or dashes): safe to put into a URL path."""
    return isinstance(name, str) and _REPOSITORY_NAME.fullmatch(name) is not None


def is_tag_name(tag: object) -> bool:
    """Whether `tag` is a tag of the distribution grammar (`[\\w][\\w.-]{0,127}`, ASCII): safe to put
    into a URL path."""
    return isinstance(tag, str) and _TAG_NAME.fullmatch(tag) is not None


def normalize_host(host: str, scheme: str | None = None) -> str:
    """Lowercase a registry host and drop its default port.

    `scheme` is the one the registry is reached with; image references carry none, and for
    them (scheme None) both :443 and :80 are dropped: matching more spellings only keeps more
    images, which is the safe side. Docker Hub's spellings become `docker.io`.
    """
    h = host.strip().lower()
    if "://" in h:  # an alias written as a URL
        scheme, h = h.split("://", 1)
    h = h.split("/", 1)[0]
    scheme = scheme.lower() if scheme else None
    if scheme in (None, "https") and h.endswith(":443"):
        h = h[:-4]
    elif scheme in (None, "http") and h.endswith(":80"):
        h = h[:-3]
    if h in DOCKER_HUB_HOSTS:
        h = DOCKER_HUB
    return h


def registry_key(url: str | None) -> str:
    """A registry URL as snapshots, plans and locks compare it: trimmed, no trailing slash, lower case."""
    return str(url or "").strip().rstrip("/").lower()


def same_registry(a: str | None, b: str | None) -> bool:
    """Whether two registry URLs (as configured and as recorded in a snapshot or plan) name one registry."""
    return bool(registry_key(a)) and registry_key(a) == registry_key(b)


def parse_reference(ref: str) -> ImageRef:
    """Parse an image reference as Docker would; raises ValueError when it is not one.

    The tag is `latest` when neither tag nor digest is given, None when only a digest is.
    """
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"invalid image reference {ref!r}: empty")
    try:
        parsed = Reference.parse_normalized_named(ref)
    except InvalidReference as e:
        raise ValueError(f"invalid image reference {ref!r}: {e}") from None
    except Exception as e:  # the library's regexes can raise on pathological input
        raise ValueError(f"invalid image reference {ref!r}: {e}") from None
    host = normalize_host(parsed.domain())
    repository = parsed.path()
    if host == DOCKER_HUB and "/" not in repository:
        # registry-1.docker.io/nginx: the library only adds library/ for docker.io itself
        repository = f"library/{repository}"
    tag, digest = parsed["tag"], parsed["digest"]
    if digest is not None and not _valid_digest(digest):
        raise ValueError(f"invalid image reference {ref!r}: bad digest {digest!r}")
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(host=host, repository=repository, tag=tag, digest=digest)


def digest_of_image_id(image_id: str | None) -> str | None:
    """The digest in a pod status `imageID` (`docker-pullable://h/r@sha256:..`, `h/r@sha256:..`, `sha256:..`)."""
    if not image_id:
        return None
    s = image_id.strip()
    if "://" in s:
        s = s.split("://", 1)[1]
    if "@" in s:
        s = s.rsplit("@", 1)[1]
    return s if _valid_digest(s) else None


@functools.lru_cache(maxsize=1 << 20)
def _parse_or_none(ref: str) -> ImageRef | None:
    """parse_reference, None for an invalid reference; shared by every matcher (a plan made in
    batches of repositories reads the same workload images with one matcher per batch)."""
    try:
        return parse_reference(ref)
    except ValueError:
        return None


class RegistryMatcher:
    """Decides whether an image reference points into one registry (its URL host or aliases)."""

    def __init__(self, registry_url: str, aliases: list[str] | tuple[str, ...] = ()):
        if "://" in registry_url:
            scheme, rest = registry_url.split("://", 1)
        else:
            scheme, rest = None, registry_url
        host = rest.split("/", 1)[0]
        hosts = {normalize_host(host, scheme), normalize_host(host)}
        for alias in aliases:
            hosts.add(normalize_host(alias))
        self.registry_url = registry_url
        self.hosts = frozenset(hosts)
        self._cache: dict[str, ImageRef | None] = {}
        self._parsed: dict[str, ImageRef | None] = {}

    def parse(self, ref: str) -> ImageRef | None:
        """The parsed reference whatever its host; None when it is not a valid reference."""
        try:
            return self._parsed[ref]
        except KeyError:
            pass
        result = self._parsed[ref] = _parse_or_none(ref)
        return result

    def match(self, ref: str) -> ImageRef | None:
        """The parsed reference if it points into this registry, else None (also for invalid ones)."""
        try:
            return self._cache[ref]
        except KeyError:
            pass
        parsed = self.parse(ref)
        result = parsed if parsed is not None and parsed.host in self.hosts else None
        self._cache[ref] = result
        return result


def match_images(images: Iterable[str], matcher: RegistryMatcher) -> "pandas.DataFrame":
    """One row (image, repository, tag, digest) per distinct reference pointing into `matcher`'s registry.

    Each distinct string is parsed once, however often it occurs; tag/digest are None when absent.
    """
    import pandas as pd

    rows = []
    for image in dict.fromkeys(images):
        if not isinstance(image, str):
            continue  # None / NaN from a missing column value
        m = matcher.match(image)
        if m is not None:
            rows.append((image, m.repository, m.tag, m.digest))
    return pd.DataFrame(rows, columns=["image", "repository", "tag", "digest"], dtype=object)


def other_host_images(images: Iterable[str], matcher: RegistryMatcher) -> "pandas.DataFrame":
    """One row (image, repository, tag, digest, host) per distinct valid reference into another host.

    Such a reference may still mean this registry, spelled in a way the configuration does not
    list (an IP for the host name, a forgotten alias, a node mirroring Docker Hub to it):
    evaluation keeps a same-named repository's image for it rather than guess (fail closed).
    """
    import pandas as pd

    rows = []
    for image in dict.fromkeys(images):
        if not isinstance(image, str):
            continue
        p = matcher.parse(image)
        if p is not None and p.host not in matcher.hosts:
            rows.append((image, p.repository, p.tag, p.digest, p.host))
    return pd.DataFrame(rows, columns=["image", "repository", "tag", "digest", "host"], dtype=object)


def repository_globs(globs: Iterable[str]) -> re.Pattern[str]:
    """`*` and `?` stay within one path segment, `**` crosses them (as Harbor's and GitLab's
    globs do): `team/*` selects team/api but not team/api/cache, so a glob never sweeps more
    repositories than it reads as selecting."""
    def one(glob: str) -> str:
        out, i = [], 0
        while i < len(glob):
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
            elif glob[i] == "*":
                out.append("[^/]*")
                i += 1
            elif glob[i] == "?":
                out.append("[^/]")
                i += 1
            elif glob[i] == "[" and "]" in glob[i + 1:]:
                j = glob.index("]", i + 1)
                body = glob[i + 1:j]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = j + 1
            else:
                out.append(re.escape(glob[i]))
                i += 1
        return "".join(out)
    return re.compile("|".join(f"(?:{one(g)})" for g in globs))
