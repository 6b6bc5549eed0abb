"""Sample ``data`` for every Ascend event type, for ``ascend-webhooks trigger`` and examples.

The types are the ones Ascend's documentation shows (SPEC section 1). The payloads are made
up but shaped like the real thing (an insurance premium invoice, a payout to an agency, a refund
to an insured), so that a receiver under test sees realistic nesting, money as integer cents,
ISO 8601 times and null fields. Standard library only: the integrator CLI imports it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

__all__ = ["EVENT_TYPES", "sample_body", "sample_data"]

_INSURED = {
    "id": "ins_01HZX3Q4M8N2P5R7T9V1W3Y5Z7",
    "type": "business",
    "name": "Harbor Street Bakery LLC",
    "email": "billing@harborstreetbakery.example",
}
_AGENCY = {"id": "agc_01HZX3R0A2B4C6D8E0F2G4H6J8", "name": "Summit Risk Partners"}


def _invoice(status: str, **extra: Any) -> dict[str, Any]:
    invoice: dict[str, Any] = {
        "id": "inv_01J0B6KZ3W9Q8F4T2R7N5M1XHC",
        "object": "invoice",
        "status": status,
        "invoice_number": "INV-2024-004187",
        "currency": "usd",
        "amount_cents": 1_284_350,
        "amount_paid_cents": 0,
        "due_date": "2024-07-15",
        "created_at": "2024-06-15T14:02:11Z",
        "insured": dict(_INSURED),
        "agency": dict(_AGENCY),
        "line_items": [
            {
                "policy_number": "GL-7731904",
                "coverage": "General Liability",
                "carrier": "Northwind Mutual",
                "premium_cents": 842_000,
                "taxes_and_fees_cents": 42_350,
            },
            {
                "policy_number": "WC-5528016",
                "coverage": "Workers' Compensation",
                "carrier": "Atlas Casualty",
                "premium_cents": 400_000,
                "taxes_and_fees_cents": 0,
            },
        ],
        "payment_method": None,
        "paid_at": None,
        "voided_at": None,
    }
    invoice.update(extra)
    return invoice


_CARD = {"type": "card", "brand": "visa", "last4": "4242"}
_BANK = {"type": "ach_debit", "bank_name": "First Federal", "last4": "6789"}


def _payout(status: str, **extra: Any) -> dict[str, Any]:
    payout: dict[str, Any] = {
        "id": "po_01J0C1T7YV5K2H9D3S8G6F4BQA",
        "object": "payout",
        "status": status,
        "currency": "usd",
        "amount_cents": 96_326,
        "payee": {
            "type": "agency",
            "id": _AGENCY["id"],
            "name": _AGENCY["name"],
            "bank_account": {"bank_name": "Pacific Commerce Bank", "last4": "0137"},
        },
        "invoice_ids": ["inv_01J0B6KZ3W9Q8F4T2R7N5M1XHC"],
        "description": "Commission for INV-2024-004187",
        "expected_arrival_date": "2024-06-20",
        "created_at": "2024-06-17T09:30:00Z",
        "failure_reason": None,
    }
    payout.update(extra)
    return payout


def _refund(status: str, **extra: Any) -> dict[str, Any]:
    refund: dict[str, Any] = {
        "id": "rfd_01J0D4N6PX8R3T5V7W9Y2Z4B6C",
        "object": "refund",
        "status": status,
        "currency": "usd",
        "amount_cents": 42_350,
        "invoice_id": "inv_01J0B6KZ3W9Q8F4T2R7N5M1XHC",
        "insured": dict(_INSURED),
        "reason": "policy_cancelled",
        "policy_number": "GL-7731904",
        "destination": dict(_BANK),
        "created_at": "2024-07-02T16:45:20Z",
    }
    refund.update(extra)
    return refund


_SAMPLES: dict[str, dict[str, Any]] = {
    "invoice.created": {"invoice": _invoice("open")},
    "invoice.processing_payment": {
        "invoice": _invoice("processing_payment", payment_method=dict(_BANK)),
        "payment": {
            "id": "pay_01J0BT2C6E8G0J2L4N6Q8S0U2W",
            "amount_cents": 1_284_350,
            "method": dict(_BANK),
            "initiated_at": "2024-06-18T11:20:05Z",
        },
    },
    "invoice.paid": {
        "invoice": _invoice(
            "paid",
            amount_paid_cents=1_284_350,
            payment_method=dict(_CARD),
            paid_at="2024-06-18T11:20:09Z",
        )
    },
    "invoice.voided": {
        "invoice": _invoice("voided", voided_at="2024-06-19T08:00:00Z"),
        "reason": "Replaced by INV-2024-004203 after a coverage change",
    },
    "invoice.marked_overdue": {
        "invoice": _invoice("overdue"),
        "days_overdue": 3,
        "reminders_sent": 2,
    },
    "payout.paying": {"payout": _payout("paying")},
    "payout.paid": {"payout": _payout("paid", arrived_at="2024-06-20T13:05:44Z")},
    "payout.on_hold": {
        "payout": _payout("on_hold", hold_reason="Bank account verification pending"),
    },
    "payout.canceled": {
        "payout": _payout("canceled", canceled_at="2024-06-18T10:12:00Z"),
    },
    "payout.failed": {
        "payout": _payout(
            "failed",
            failure_reason="account_closed",
            failure_message="The receiving bank reports the account as closed.",
        ),
    },
    "refund.paid": {"refund": _refund("paid", paid_at="2024-07-03T09:14:31Z")},
    "refund.cancelled": {
        "refund": _refund("cancelled", cancelled_at="2024-07-02T17:00:00Z"),
    },
}

#: The event types of Ascend's documentation, in the order it lists them.
EVENT_TYPES: tuple[str, ...] = tuple(_SAMPLES)


def sample_data(event_type: str) -> dict[str, Any]:
    """A fresh copy of the sample ``data`` for ``event_type``; ``{}`` for a type not listed."""
    return copy.deepcopy(_SAMPLES.get(event_type, {}))


def sample_body(event_id: str, event_type: str, data: dict[str, Any] | None = None) -> bytes:
    """The compact UTF-8 JSON body ``{"id", "type", "data"}`` that Ascend would POST.

    Raises ValueError for what JSON or UTF-8 cannot carry: NaN, infinities, lone surrogates.
    """
    if data is None:
        data = sample_data(event_type)
    event = {"id": event_id, "type": event_type, "data": data}
    return json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode(
        "utf-8"
    )
