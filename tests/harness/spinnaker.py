"""What Spinnaker makes of a Run Job's log: clouddriver's PropertyParser rule,
reimplemented so tests can run it over the waiter's real output.

Source: spinnaker/clouddriver,
clouddriver-kubernetes/src/main/java/com/netflix/spinnaker/clouddriver/kubernetes/
provider/view/PropertyParser.java (extractPropertiesFromLog), as called by
KubernetesJobProvider.getFileContents on `kubectl logs job/NAME -c CONTAINER`
(stdout and stderr of the container together). The rule, step by step:

- the log is split on "\\n" with Guava's Splitter: parts trimmed (Guava's
  whitespace), empty parts dropped;
- a line in which "SPINNAKER_PROPERTY_" occurs anywhere is split on "=" the same
  way; unless that gives exactly two parts the line is skipped entirely (a Java
  `continue`, which also skips the JSON check below for that line); otherwise
  key = first part with the first "SPINNAKER_PROPERTY_" removed, lower-cased,
  value = second part;
- a line matching ^\\s*SPINNAKER_CONFIG_JSON= has that text removed (first
  occurrence) and the rest read by Jackson as a JSON object, whose entries are
  added (later lines win); a document Jackson cannot read fails the whole parse.
"""

from __future__ import annotations

import json
import re
from typing import Any

PROPERTY_MAGIC = "SPINNAKER_PROPERTY_"
JSON_MAGIC = "SPINNAKER_CONFIG_JSON="
# Guava CharMatcher.whitespace(): the Unicode White_Space characters.
GUAVA_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000"
)
JAVA_JSON_LINE = re.compile(r"^[ \t\n\x0b\f\r]*" + re.escape(JSON_MAGIC))  # Java's \s


class ParseError(Exception):
    """The parser threw: Orca gets no properties at all from this log."""


def _split(text: str, separator: str) -> list[str]:
    """Splitter.on(separator).omitEmptyStrings().trimResults()."""
    parts = (part.strip(GUAVA_WHITESPACE) for part in text.split(separator))
    return [part for part in parts if part]


def extract_properties_from_log(log: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for line in _split(log, "\n"):
        if PROPERTY_MAGIC in line:
            parts = _split(line, "=")
            if len(parts) != 2:
                continue
            found[parts[0].replace(PROPERTY_MAGIC, "", 1).lower()] = parts[1]
        if JAVA_JSON_LINE.search(line):
            content = line.replace(JSON_MAGIC, "", 1)
            try:
                # Jackson's readValue ignores trailing tokens by default.
                document, _ = json.JSONDecoder().raw_decode(content.lstrip())
            except ValueError as exc:
                raise ParseError(f"{JSON_MAGIC} content is not JSON: {content!r}") from exc
            if not isinstance(document, dict):
                raise ParseError(f"{JSON_MAGIC} content is not a JSON object: {content!r}")
            found.update(document)
    return found
