"""Notifications: which triggers a transition fires, templating, configuration,
the Slack and Teams payload shapes, backoff, and delivery (dedupe, retries, metrics,
Events) against a local HTTP server.

Payload rules checked here, from the services' own documentation:
- Slack incoming webhooks: a JSON object with `text` (the fallback when `blocks` are
  given), optional Block Kit `blocks`; https://api.slack.com/messaging/webhooks.
- Teams incoming webhooks / Workflows: `type` must be "message", `attachments` holds
  cards with `contentType` "application/vnd.microsoft.card.adaptive" and the card in
  `content` (MicrosoftDocs/msteams-docs, msteams-platform/webhooks-and-connectors/
  how-to/connectors-using.md, "Send Adaptive Cards using an Incoming Webhook"); a
  throttled connector answers 200 with "Microsoft Teams endpoint returned HTTP error
  429" in its body (same page, "Rate limiting for connectors").
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from canary_operator.api.models import (
    CanaryRolloutStatus,
    CleanupStatus,
    Outcome,
    Phase,
    Result,
    StepPhase,
    StepStatus,
)
from canary_operator.kube.api import Conflict, JsonObj
from canary_operator.metrics import Metrics
from canary_operator.notifications import config, payloads, triggers
from canary_operator.notifications.config import ConfigError, Subscription
from canary_operator.notifications.ledger import LEDGER_ANNOTATION, ledger
from canary_operator.notifications.notifier import Notifier
from canary_operator.notifications.sender import Backoff
from canary_operator.notifications.templating import TemplateError, render
from tests.harness.fake_http import FakeServer, Reply
from tests.unit.test_metrics import sample

NS = "team"

# --------------------------------------------------------------- triggers


def st(phase: Phase, run: int = 1, **kw: Any) -> CanaryRolloutStatus:
    return CanaryRolloutStatus(phase=phase, run=run, **kw)


def names(old: CanaryRolloutStatus | None, new: CanaryRolloutStatus) -> list[str]:
    return [f.key for f in triggers.fired(old, new)]


def test_started_fires_once_when_the_run_starts() -> None:
    queued = st(Phase.QUEUED)
    started = st(Phase.PROGRESSING, started_at="2026-01-01T00:00:00Z")
    assert names(queued, started) == ["1/on-started"]
    assert names(started, started.model_copy(update={"weight": 10})) == []


def test_paused_names_the_step_so_two_pauses_are_two_messages() -> None:
    running = st(Phase.PROGRESSING, started_at="t", current_step=1)
    paused = running.model_copy(update={"phase": Phase.PAUSED})
    assert names(running, paused) == ["1/on-paused/step-2"]
    later = paused.model_copy(update={"current_step": 4})
    assert names(running.model_copy(update={"current_step": 4}), later) == ["1/on-paused/step-5"]
    assert names(paused, paused) == []


def test_step_failed_fires_at_the_decision_failed_at_the_end() -> None:
    running = st(Phase.PROGRESSING, started_at="t")
    outcome = Outcome(result=Result.STEP_FAILED, message="smoke", failed_step=2, decided_at="d")
    cleaning = running.model_copy(update={"phase": Phase.CLEANING_UP, "outcome": outcome})
    assert names(running, cleaning) == ["1/on-step-failed"]
    failed = cleaning.model_copy(update={"phase": Phase.FAILED})
    assert names(cleaning, failed) == ["1/on-failed"]


def test_promoted_succeeded_aborted_and_cleanup_blocked() -> None:
    step = StepStatus(name="promote", kind="promote", phase=StepPhase.RUNNING)
    running = st(Phase.PROGRESSING, started_at="t", steps=[step])
    done = step.model_copy(update={"phase": StepPhase.SUCCEEDED})
    promoted = running.model_copy(update={"steps": [done]})
    assert names(running, promoted) == ["1/on-promoted"]
    assert names(promoted, promoted.model_copy(update={"phase": Phase.SUCCEEDED})) == [
        "1/on-succeeded"
    ]
    cleaning = st(Phase.CLEANING_UP, started_at="t", cleanup=CleanupStatus(attempts=0))
    blocked = cleaning.model_copy(
        update={"cleanup": CleanupStatus(attempts=1, last_error="route unreachable")}
    )
    assert names(cleaning, blocked) == ["1/on-cleanup-blocked"]
    again = blocked.model_copy(
        update={"cleanup": CleanupStatus(attempts=2, last_error="route unreachable")}
    )
    assert names(blocked, again) == []
    assert names(cleaning, cleaning.model_copy(update={"phase": Phase.ABORTED})) == ["1/on-aborted"]


def test_a_new_run_compares_against_nothing() -> None:
    ended = st(Phase.SUCCEEDED, run=1, started_at="a")
    run2 = st(Phase.PROGRESSING, run=2, started_at="b")
    assert names(ended, run2) == ["2/on-started"]


# -------------------------------------------------------------- templating


def test_render_fills_dotted_names_and_escapes_inside_json() -> None:
    ctx = {"rollout": {"name": 'we"b', "run": 3}, "trigger": "on-started"}
    assert render("{{ rollout.name }} run {{rollout.run}}", ctx) == 'we"b run 3'
    body = render('{"n": "{{ rollout.name }}"}', ctx, json_string=True)
    assert json.loads(body) == {"n": 'we"b'}


def test_render_refuses_unknown_names() -> None:
    with pytest.raises(TemplateError, match=r"rollout\.nmae"):
        render("{{ rollout.nmae }}", {"rollout": {"name": "x"}})


# ------------------------------------------------------------- configuration


def configmap(**extra: str) -> dict[str, str]:
    return {
        "service.slack.chat": "url: $slack-url\n",
        "service.teams.ops": "url: $teams-url\n",
        "service.webhook.pager": (
            "url: http://pager.internal/hook\nheaders: {Authorization: $token}\n"
            'body: \'{"event": "{{ trigger }}", "rollout": "{{ rollout.name }}"}\'\n'
        ),
        **extra,
    }


SECRET = {
    "slack-url": "https://hooks.example/T/B/x",
    "teams-url": "https://t.example/w",
    "token": "Bearer s3",
}


def test_parse_reads_services_with_secret_values() -> None:
    cfg = config.parse(configmap(), SECRET)
    assert cfg.services["chat"].type == "slack"
    assert cfg.services["chat"].url == "https://hooks.example/T/B/x"
    assert cfg.services["pager"].headers == {"Authorization": "Bearer s3"}
    assert cfg.lock_waiting_after().total_seconds() == 600
    assert set(cfg.triggers) == set(triggers.TRIGGERS)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"service.sms.x": "url: http://a"}, "type one of slack, teams, webhook"),
        ({"service.slack.x": "channel: a"}, "url is required"),
        ({"service.slack.x": "url: $missing"}, "has no key 'missing'"),
        ({"service.slack.x": "url: ftp://a"}, "must be http"),
        ({"trigger.on-everything": "template: x"}, "unknown trigger"),
        ({"trigger.on-started": "template: nope"}, "no template 'nope'"),
        ({"trigger.on-lock-waiting": "after: soon"}, "after"),
        ({"service.slack.x": "[: not yaml"}, "not YAML"),
    ],
)
def test_parse_rejects_bad_configuration_clearly(data: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config.parse(data, SECRET)


def test_trigger_override_sets_the_lock_wait_threshold_and_template() -> None:
    cfg = config.parse(
        configmap(
            **{
                "trigger.on-lock-waiting": "after: 90s\ntemplate: mine",
                "template.mine": "title: hi\nmessage: '{{ rollout.queue }}'",
            }
        ),
        SECRET,
    )
    assert cfg.lock_waiting_after().total_seconds() == 90
    assert cfg.templates["mine"].title == "hi"


def test_subscriptions_from_annotations() -> None:
    subs, problems = config.subscriptions(
        {
            config.SUBSCRIBE_PREFIX + "on-succeeded.chat": "#deploys",
            config.SUBSCRIBE_PREFIX + "on-failed.ops": "",
            config.SUBSCRIBE_PREFIX + "on-done.chat": "",
            "unrelated": "x",
        }
    )
    assert subs == [
        Subscription("on-failed", "ops", ""),
        Subscription("on-succeeded", "chat", "#deploys"),
    ]
    assert len(problems) == 1 and "on-done" in problems[0]


# ---------------------------------------------------------------- payloads


def rollout_body(annotations: dict[str, str] | None = None, **status: Any) -> JsonObj:
    return {
        "metadata": {
            "name": "web",
            "namespace": NS,
            "uid": "u-1",
            "resourceVersion": "1",
            "annotations": annotations or {},
        },
        "spec": {
            "target": {"deployment": "web"},
            "images": [{"container": "app", "image": "web:2"}],
        },
        "status": {"phase": "Succeeded", "run": 1, **status},
    }


def test_slack_payload_has_text_and_blocks() -> None:
    cfg = config.parse(configmap(), SECRET)
    ctx = payloads.context(rollout_body(), triggers.SUCCEEDED)
    template = cfg.templates["rollout-succeeded"]
    data, ctype = payloads.payload(
        cfg.services["chat"], template, ctx, Subscription(triggers.SUCCEEDED, "chat", "#deploys")
    )
    doc = json.loads(data)
    assert ctype == "application/json"
    assert doc["text"].startswith("Rollout web succeeded")  # required fallback text
    assert doc["channel"] == "#deploys"
    assert [b["type"] for b in doc["blocks"]] == ["header", "section", "context"]
    assert doc["blocks"][0]["text"] == {"type": "plain_text", "text": "Rollout web succeeded"}


def test_teams_payload_is_an_adaptive_card_in_a_message() -> None:
    cfg = config.parse(configmap(), SECRET)
    ctx = payloads.context(rollout_body(), triggers.SUCCEEDED)
    data, _ = payloads.payload(
        cfg.services["ops"],
        cfg.templates["rollout-succeeded"],
        ctx,
        Subscription(triggers.SUCCEEDED, "ops"),
    )
    doc = json.loads(data)
    assert doc["type"] == "message"
    (attachment,) = doc["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"]
    assert card["body"][0] == {
        "type": "TextBlock",
        "text": "Rollout web succeeded",
        "weight": "Bolder",
        "size": "Medium",
        "wrap": True,
    }


def test_webhook_body_is_templated_json() -> None:
    cfg = config.parse(configmap(), SECRET)
    ctx = payloads.context(rollout_body(), triggers.SUCCEEDED)
    data, _ = payloads.payload(
        cfg.services["pager"], cfg.templates["rollout-succeeded"], ctx, Subscription("x", "pager")
    )
    assert json.loads(data) == {"event": "on-succeeded", "rollout": "web"}


def test_teams_throttle_in_a_200_is_a_retry() -> None:
    teams = config.parse(configmap(), SECRET).services["ops"]
    assert payloads.accepted(teams, 200, "1") == (True, False)
    assert payloads.accepted(teams, 200, payloads.TEAMS_THROTTLED) == (False, True)
    assert payloads.accepted(teams, 500, "") == (False, True)
    assert payloads.accepted(teams, 400, "bad") == (False, False)
    assert payloads.accepted(teams, 429, "") == (False, True)


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(initial=1, factor=2, cap=10)
    assert [b.delay(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]


# ---------------------------------------------------------------- delivery


def started(notifier: Notifier) -> Notifier:
    notifier.start()
    return notifier


class FakeKube:
    """The two calls the notifier makes: reads (ConfigMap, Secret, rollout) and a merge
    patch of the rollout's annotations with a resourceVersion precondition."""

    def __init__(self, objects: dict[str, JsonObj]) -> None:
        self.objects = objects
        self.patches: list[JsonObj] = []

    async def get(self, resource_path: str) -> JsonObj | None:
        found = self.objects.get(resource_path)
        return json.loads(json.dumps(found)) if found is not None else None

    async def merge_patch(self, resource_path: str, patch: JsonObj) -> JsonObj:
        body = self.objects[resource_path]
        meta = patch["metadata"]
        if meta.get("resourceVersion") != body["metadata"]["resourceVersion"]:
            raise Conflict("changed")
        body["metadata"].setdefault("annotations", {}).update(meta.get("annotations") or {})
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        self.patches.append(patch)
        return body


class Events:
    def __init__(self) -> None:
        self.emitted: list[tuple[str, str]] = []

    async def emit(
        self, namespace: str, name: str, uid: str, reason: str, message: str, warning: bool
    ) -> None:
        self.emitted.append((reason, message))


def cluster(url: str, body: JsonObj) -> FakeKube:
    secret = {k: base64.b64encode(v.encode()).decode() for k, v in SECRET.items()}
    data = configmap()
    data["service.slack.chat"] = f"url: {url}/slack\n"
    data["service.teams.ops"] = f"url: {url}/teams\n"
    return FakeKube(
        {
            f"/api/v1/namespaces/{NS}/configmaps/{config.CONFIGMAP}": {"data": data},
            f"/api/v1/namespaces/{NS}/secrets/{config.SECRET}": {"data": secret},
            f"/apis/canary-operator.dev/v1alpha1/namespaces/{NS}/canaryrollouts/web": body,
        }
    )


SUBSCRIBED = {
    config.SUBSCRIBE_PREFIX + "on-succeeded.chat": "",
    config.SUBSCRIBE_PREFIX + "on-succeeded.ops": "",
    config.SUBSCRIBE_PREFIX + "on-failed.chat": "",
}
FAST = Backoff(initial=0.01, factor=2, cap=0.05, give_up_after=0.5)


async def test_one_message_per_trigger_and_service_even_when_told_twice() -> None:
    async with FakeServer(Reply(200, "ok")) as server:
        body = rollout_body(SUBSCRIBED)
        kube = cluster(server.url, body)
        metrics = Metrics()
        notifier = started(Notifier(kube, Events(), metrics, FAST))  # type: ignore[arg-type]
        old, new = st(Phase.CLEANING_UP), st(Phase.SUCCEEDED)
        notifier.transition(body, old, new)
        notifier.transition(body, old, new)  # a repeated write: no second message
        await notifier.idle()
        await notifier.stop()
    assert sorted(r.path for r in server.requests) == ["/slack", "/teams"]
    assert ledger(kube.objects[next(k for k in kube.objects if k.endswith("/web"))]) == {
        "1/on-succeeded/chat": "sent",
        "1/on-succeeded/ops": "sent",
    }
    text = metrics.render()
    assert (
        sample(
            text,
            "canary_operator_notifications_total",
            service="chat",
            trigger="on-succeeded",
            result="sent",
        )
        == 1
    )


class BusyRollout(FakeKube):
    """Another writer (the run's own status writes, as it ends) changes the rollout
    between each of the first `busy` reads of it and the ledger's conditional write."""

    def __init__(self, objects: dict[str, JsonObj], busy: int) -> None:
        super().__init__(objects)
        self.busy = busy

    async def get(self, resource_path: str) -> JsonObj | None:
        found = await super().get(resource_path)
        if resource_path.endswith("/web") and self.busy > 0:
            self.busy -= 1
            meta = self.objects[resource_path]["metadata"]
            meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return found


async def test_a_burst_of_other_writes_does_not_drop_a_ledger_mark() -> None:
    async with FakeServer(Reply(200, "ok")) as server:
        body = rollout_body({config.SUBSCRIBE_PREFIX + "on-failed.chat": ""})
        plain = cluster(server.url, body)
        kube = BusyRollout(plain.objects, busy=6)  # more than 3 tries for each mark
        notifier = started(Notifier(kube, Events(), None, FAST))  # type: ignore[arg-type]
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.FAILED))
        await notifier.idle()
        await notifier.stop()
    assert len(server.requests) == 1
    assert ledger(kube.objects[next(k for k in kube.objects if k.endswith("/web"))]) == {
        "1/on-failed/chat": "sent"
    }


async def test_a_sent_key_in_the_ledger_is_not_sent_again_by_a_new_process() -> None:
    async with FakeServer(Reply(200, "ok")) as server:
        body = rollout_body(
            {**SUBSCRIBED, LEDGER_ANNOTATION: json.dumps({"1/on-succeeded/chat": "sent"})}
        )
        notifier = started(Notifier(cluster(server.url, body), Events(), None, FAST))  # type: ignore[arg-type]
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.SUCCEEDED))
        await notifier.idle()
        await notifier.stop()
    assert [r.path for r in server.requests] == ["/teams"]


async def test_a_pending_key_is_resumed_by_a_new_process() -> None:
    async with FakeServer(Reply(200, "ok")) as server:
        body = rollout_body(
            {**SUBSCRIBED, LEDGER_ANNOTATION: json.dumps({"1/on-succeeded/chat": "pending"})}
        )
        kube = cluster(server.url, body)
        notifier = started(Notifier(kube, Events(), None, FAST))  # type: ignore[arg-type]
        notifier.seen(body)
        notifier.seen(body)  # the watch shows it again: still one delivery
        await notifier.idle()
        await notifier.stop()
    assert [r.path for r in server.requests] == ["/slack"]
    assert r_json(server.requests[0])["text"].startswith("Rollout web succeeded")


def r_json(recorded: Any) -> Any:
    return recorded.json()


async def test_retries_with_backoff_then_delivers_and_tells_the_failure_once() -> None:
    async with FakeServer(Reply(500), Reply(503), Reply(200, "ok")) as server:
        body = rollout_body({config.SUBSCRIBE_PREFIX + "on-failed.chat": ""})
        events, metrics = Events(), Metrics()
        notifier = started(Notifier(cluster(server.url, body), events, metrics, FAST))  # type: ignore[arg-type]
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.FAILED))
        await notifier.idle()
        await notifier.stop()
    assert len(server.requests) == 3
    assert [r for r, _ in events.emitted] == ["NotificationFailed"]
    text = metrics.render()
    labels = {"service": "chat", "trigger": "on-failed"}
    assert sample(text, "canary_operator_notifications_total", **labels, result="failed") == 2
    assert sample(text, "canary_operator_notifications_total", **labels, result="sent") == 1


async def test_gives_up_after_its_deadline_and_a_4xx_at_once() -> None:
    async with FakeServer(Reply(500)) as server:
        body = rollout_body({config.SUBSCRIBE_PREFIX + "on-failed.chat": ""})
        events, metrics = Events(), Metrics()
        kube = cluster(server.url, body)
        notifier = started(Notifier(kube, events, metrics, FAST))  # type: ignore[arg-type]
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.FAILED))
        await notifier.idle()
        await notifier.stop()
    assert len(server.requests) >= 3
    assert [r for r, _ in events.emitted] == ["NotificationFailed", "NotificationAbandoned"]
    assert ledger(kube.objects[next(k for k in kube.objects if k.endswith("/web"))]) == {
        "1/on-failed/chat": "failed"
    }
    async with FakeServer(Reply(400, "invalid_payload")) as server:
        body = rollout_body({config.SUBSCRIBE_PREFIX + "on-failed.chat": ""})
        events = Events()
        notifier = started(Notifier(cluster(server.url, body), events, None, FAST))  # type: ignore[arg-type]
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.FAILED))
        await notifier.idle()
        await notifier.stop()
    assert len(server.requests) == 1
    assert [r for r, _ in events.emitted] == ["NotificationAbandoned"]
    assert "invalid_payload" in events.emitted[0][1]


async def test_transition_returns_at_once_whatever_the_endpoint_does() -> None:
    """The hook the reconciler calls does no I/O: a hanging endpoint costs it nothing."""
    from tests.harness.fake_http import HANG

    async with FakeServer(HANG) as server:
        body = rollout_body({config.SUBSCRIBE_PREFIX + "on-failed.chat": ""})
        notifier = started(Notifier(cluster(server.url, body), Events(), None, FAST))  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.FAILED))
        assert loop.time() - t0 < 0.05
        await notifier.stop()  # cancels the hanging delivery


async def test_unknown_service_is_an_event_not_a_crash() -> None:
    async with FakeServer(Reply(200)) as server:
        body = rollout_body({config.SUBSCRIBE_PREFIX + "on-failed.nowhere": ""})
        events, metrics = Events(), Metrics()
        notifier = started(Notifier(cluster(server.url, body), events, metrics, FAST))  # type: ignore[arg-type]
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.FAILED))
        await notifier.idle()
        await notifier.stop()
    assert server.requests == []
    assert events.emitted and events.emitted[0][0] == "NotificationConfigInvalid"
    assert "nowhere" in events.emitted[0][1]


async def test_lock_waiting_fires_once_after_the_threshold() -> None:
    async with FakeServer(Reply(200, "ok")) as server:
        from datetime import UTC, datetime, timedelta

        queued_at = (datetime.now(UTC) - timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = rollout_body(
            {config.SUBSCRIBE_PREFIX + "on-lock-waiting.chat": ""},
            phase="Queued",
            queuedAt=queued_at,
            queueLabel="#2 behind web-old",
            queue={"lock": "cro-lock-web", "holder": "web-old", "position": 2, "waiting": 2},
        )
        kube = cluster(server.url, body)
        cm = kube.objects[f"/api/v1/namespaces/{NS}/configmaps/{config.CONFIGMAP}"]
        cm["data"]["trigger.on-lock-waiting"] = "after: 3s"
        notifier = started(Notifier(kube, Events(), None, FAST))  # type: ignore[arg-type]
        notifier.seen(body)
        notifier.seen(body)
        while notifier._timers:  # the timer hands over to a delivery task
            await asyncio.gather(*notifier._timers.values(), return_exceptions=True)
        await notifier.idle()
        await notifier.stop()
    assert len(server.requests) == 1
    doc = server.requests[0].json()
    assert "waiting for its lock" in doc["text"] and "#2 behind web-old" in doc["text"]


async def test_a_notifier_not_started_does_nothing() -> None:
    """A standby replica sees the watch too; only the running controller notifies."""
    async with FakeServer(Reply(200, "ok")) as server:
        body = rollout_body(
            {**SUBSCRIBED, LEDGER_ANNOTATION: json.dumps({"1/on-succeeded/chat": "pending"})}
        )
        notifier = Notifier(cluster(server.url, body), Events(), None, FAST)  # type: ignore[arg-type]
        notifier.seen(body)
        notifier.transition(body, st(Phase.CLEANING_UP), st(Phase.SUCCEEDED))
        await notifier.idle()
        notifier.start()  # becoming the leader: what is pending is resumed
        notifier.seen(body)
        await notifier.idle()
        await notifier.stop()
    assert [r.path for r in server.requests] == ["/slack"]
