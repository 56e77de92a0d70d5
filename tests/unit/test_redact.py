"""URL redaction (canary_operator.redact) and body templates (checks/render.py)."""

from __future__ import annotations

import json

import pytest

from canary_operator.checks.render import VARIABLES, render_body, template_problems
from canary_operator.checks.webhook import display_url
from canary_operator.redact import MASK, redact_url, scrub

SLACK = "https://hooks.slack.com/services/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"
TEAMS = (
    "https://contoso.webhook.office.com/webhookb2/3f2a6c1e-1b2c-4d5e-8f90-a1b2c3d4e5f6@"
    "72f988bf-86f1-41af-91ab-2d7cd011db47/IncomingWebhook/9c1e2d3f4a5b6c7d8e9f/"
    "0a1b2c3d-4e5f-6789-abcd-ef0123456789"
)
DISCORD = (
    "https://discord.com/api/webhooks/123456789012345678/AbCdEfGhIjKlMnOpQrStUvWxYz-0123456789"
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SLACK, f"https://hooks.slack.com/services/{MASK}/{MASK}/{MASK}"),
        (
            TEAMS,
            f"https://contoso.webhook.office.com/{MASK}/{MASK}/IncomingWebhook/{MASK}/{MASK}",
        ),
        (DISCORD, f"https://discord.com/api/webhooks/{MASK}/{MASK}"),
        ("http://tests.internal/run", "http://tests.internal/run"),
        ("http://svc.ns.svc:8080/api/v1/check", "http://svc.ns.svc:8080/api/v1/check"),
        (
            "https://h.example/hook?token=s3cret&channel=ops",
            f"https://h.example/hook?token={MASK}&channel={MASK}",
        ),
        ("https://user:p4ss@h.example/x", "https://h.example/x"),
        ("https://h.example/x#frag-s3cret", "https://h.example/x"),
        ("http://[::1]:9090/", "http://[::1]:9090/"),
        ("not a url", MASK),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert display_url(url) == shown


def test_redacted_urls_keep_no_secret_part() -> None:
    for url, secret in ((SLACK, "aB3dE5fG7hI9jK1lM3nO5pQ7"), (DISCORD, "AbCdEfGhIjKlMnOpQrSt")):
        assert secret not in redact_url(url)


def test_scrub_replaces_the_url_and_its_credential_parts_anywhere_in_a_message() -> None:
    message = (
        f"Cannot connect to host hooks.slack.com:443 ssl:default [{SLACK}] "
        "(path /services/T0123ABCD/B0456EFGH/aB3dE5fG7hI9jK1lM3nO5pQ7)"
    )
    cleaned = scrub(message, [SLACK])
    assert "aB3dE5fG7hI9jK1lM3nO5pQ7" not in cleaned and "T0123ABCD" not in cleaned
    assert "hooks.slack.com" in cleaned
    assert scrub("nothing to hide", [SLACK]) == "nothing to hide"


def test_render_body_escapes_values_as_json_string_content() -> None:
    body = render_body(
        '{"text": "{{rollout}} run {{run}}: {{outcome}} ({{ message }})", "w": {{weight}}}',
        {
            "rollout": "web",
            "run": 2,
            "outcome": "StepFailed",
            "message": 'a "quoted"\nline',
            "weight": 25,
        },
    )
    assert json.loads(body) == {
        "text": 'web run 2: StepFailed (a "quoted"\nline)',
        "w": 25,
    }


def test_render_body_missing_values_are_empty_and_unknown_names_are_refused() -> None:
    assert render_body("[{{step}}]", {}) == "[]"
    assert template_problems("{{rollout}} {{token}} {{x}}") == [
        "unknown template variable {{token}}, {{x}} (known: " + ", ".join(VARIABLES) + ")"
    ]
    with pytest.raises(ValueError, match="token"):
        render_body("{{token}}", {})
    assert template_problems("no variables, {single} braces") == []
