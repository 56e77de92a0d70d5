"""The new version's containers and image references, checked against the target
(each problem starts with its field path)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from canary_operator.api.models import CanaryRolloutSpec
from canary_operator.kube.api import JsonObj

# Image references, as container runtimes parse them (the distribution "reference"
# grammar): [domain[:port]/]path-component(/path-component)*[:tag][@digest], the name
# at most 255 characters. The API server itself only refuses surrounding whitespace
# (and only for Pods, not for a Deployment's template), so the rest is checked here.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?")
NAME_MAX = 255
# Long enough for a name, a tag and a sha512 digest; a longer text is not an image.
REFERENCE_MAX = NAME_MAX + 1 + 128 + 1 + 7 + 128


def image_problem(image: Any) -> str | None:
    """Why `image` is not a usable image reference (None: it is)."""
    if not isinstance(image, str) or not image:
        return "an image is required"
    if image != image.strip():
        return f"{_quote(image)} must not have leading or trailing whitespace"
    if any(c.isspace() for c in image):
        return f"{_quote(image)} must not contain whitespace"
    if len(image) > REFERENCE_MAX:
        return f"the image reference is {len(image)} characters long (at most {REFERENCE_MAX})"
    match = _REFERENCE.fullmatch(image)
    if match is None:
        return (
            f"{_quote(image)} is not a valid image reference (expected "
            "[registry/]repository[:tag][@digest], the repository in lower case)"
        )
    if len(match.group("name")) > NAME_MAX:
        return f"the repository name is longer than {NAME_MAX} characters"
    return None


def _quote(text: str, room: int = 80) -> str:
    shown = text if len(text) <= room else text[:room] + "..."
    return repr(shown)


def _containers(pod_spec: Any) -> Iterator[tuple[str, Any]]:
    """(field, container) of a PodSpec given as plain JSON (it may be ill-typed)."""
    if not isinstance(pod_spec, dict):
        return
    for kind in ("initContainers", "containers"):
        items = pod_spec.get(kind)
        if isinstance(items, list):
            for n, container in enumerate(items):
                yield f"{kind}[{n}]", container


def image_problems(spec: CanaryRolloutSpec, target: JsonObj) -> list[str]:
    """The new version's containers and images, checked against the target."""
    problems: list[str] = []
    template_spec = ((target.get("spec") or {}).get("template") or {}).get("spec") or {}
    names = [c.get("name") for _, c in _containers(template_spec) if isinstance(c, dict)]
    deployment = spec.target.deployment
    first: dict[str, int] = {}  # container -> the first entry that sets it
    for n, override in enumerate(spec.images or []):
        if override.container in first:
            # The CRD refuses it at apply (a list keyed by container); a spec from an
            # older CRD, or built in code, is refused here.
            problems.append(
                f"spec.images[{n}].container: container {override.container!r} is already "
                f"set by spec.images[{first[override.container]}]"
            )
        first.setdefault(override.container, n)
        if override.container not in names:
            has = ", ".join(sorted(str(x) for x in names)) or "none"
            problems.append(
                f"spec.images[{n}].container: the target Deployment {deployment} has no "
                f"container {override.container!r} (it has: {has})"
            )
        problem = image_problem(override.image)
        if problem:
            problems.append(f"spec.images[{n}].image: {problem}")
    if spec.template is not None:
        for field, container in _containers(spec.template.spec.model_dump()):
            if isinstance(container, dict):
                problem = image_problem(container.get("image"))
                if problem:
                    problems.append(f"spec.template.spec.{field}.image: {problem}")
    return problems
