"""Notifications: lifecycle triggers delivered to Slack, Microsoft Teams and generic
webhooks, in the background (never on the reconcile path). See docs/notifications.md."""
