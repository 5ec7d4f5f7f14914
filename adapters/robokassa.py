"""Robokassa: a locally signed pay URL, the signed Result URL callback, and OpStateExt polls.

Built from Robokassa's public documentation and its official PHP SDK
(github.com/robokassa/sdk-php, ``src/Signature/SignatureService.php`` and
``src/Service/WebService.php``):

- https://docs.robokassa.ru/ru/pay-interface and https://docs.robokassa.ru/script-parameters/
  (the pay form: ``MerchantLogin``, ``OutSum``, ``InvId``, ``Description``, ``SignatureValue``,
  ``IsTest``, ``Culture``, ``Email``, ``Shp_*``);
- https://docs.robokassa.ru/ru/notifications-and-redirects (the Result URL and its ``OK{InvId}``
  answer);
- https://docs.robokassa.ru/ru/xml-interfaces (``OpStateExt`` and its result and state codes);
- https://docs.robokassa.ru/ru/testing-mode (``IsTest=1`` with the separate test passwords).

**Create.** Robokassa has no create call: ``build_create`` returns the :class:`Invoice` itself,
with the pay URL ``{API_URL}/Index.aspx?...`` signed with Password #1 over
``MerchantLogin:OutSum:InvId:Password1[:Shp_key=value...]`` (``Shp_`` parameters sorted by key).
``InvId`` is the order's ``number``; the invoice's ``psp_id`` is that number as a string. Our
order id travels as ``Shp_order_id`` and comes back in the Result URL callback. Robokassa
charges roubles only (``OutSum`` "must be given in roubles"; its ``OutSumCurrency`` converts at
the central bank rate, so the buyer would pay a different amount than the order's): an order in
another currency is refused at create with :class:`orders.errors.InvalidInput` on ``currency``,
which the engine turns into ``failed`` without a call; the API refuses such orders up front
because ``currencies`` is ``{"RUB"}``. Order metadata ``culture`` (``ru``/``en``) and ``email``
are passed on when present.

**Result URL callback.** Robokassa POSTs a form (or sends a GET query) with ``OutSum``,
``InvId``, ``SignatureValue`` and the ``Shp_*`` parameters, signed with Password #2 over
``OutSum:InvId:Password2[:Shp_key=value...]``, ``OutSum`` exactly as sent ("100", "100.00",
"100.000000"). The hex signature is compared case-insensitively in constant time. A genuine one
is signed proof that the payment was received: the result is verified with a ``paid`` report
(``OutSum`` in RUB) and the answer ``OK{InvId}`` (text/plain), without which Robokassa keeps
re-sending. The signature carries no time, so a genuine callback can be replayed
(``replayable_notifications``); replaying "paid" repeats a truth, and a dispatcher that only
takes it as a hint polls at once and learns the same from OpStateExt. A bad signature is
answered 400 with a short text and names no order, so a forger cannot even trigger polls. A
callback missing its fields, or not UTF-8 (Robokassa always sends UTF-8), is
:class:`MalformedResponse` (the API answers 400).

**Status.** ``GET {API_URL}/WebService/Service.asmx/OpStateExt?MerchantLogin=&InvoiceID=
&Signature=`` with the signature over ``MerchantLogin:InvoiceID:Password2``. The XML answer's
``Result/Code``:

====== ==================================================== ==============================
code   meaning                                              here
====== ==================================================== ==============================
0      the request was served: read ``State/Code``          see below
1      the request's signature is wrong                     :class:`CredentialsRejected`
2      no active shop with this ``MerchantLogin``           :class:`CredentialsRejected`
3      no operation with this ``InvoiceID``                 ``pending``: the buyer has not
                                                            opened the pay page yet
4      two operations with this ``InvoiceID`` (a test       :class:`RobokassaRefusedError`
       payment reused a live number)                        (transient, never final)
1000   Robokassa's internal error                           :class:`RobokassaUnavailableError`
other  undocumented                                         :class:`MalformedResponse`
====== ==================================================== ==============================

``State/Code`` to :class:`CanonicalState`:

====== ============================================================== =========
state  Robokassa's meaning                                            here
====== ============================================================== =========
5      initiated, no money received yet                               pending
10     cancelled, no money received (the buyer gave up or the wait    rejected
       ran out)
20     on hold (pre-authorised; only for shops using holds)           pending
50     money received from the buyer, being credited to the shop;     pending
       it can still end in 60, and the Result URL is sent only at 100
60     money returned to the buyer after it was received              rejected
80     suspended (an exceptional stop or a security check, handled    pending
       by Robokassa's support by hand)
100    paid, credited to the shop, the Result URL notification sent   paid
other  undocumented                                                   :class:`MalformedResponse`
====== ============================================================== =========

Rejected orders stay watched for late payments (a cancelled operation can be re-checked by
Robokassa's support and moved on), so 10 is not the end of the story.

**Amount.** ``Info`` carries two sums: ``IncSum``, what the buyer paid, and ``OutSum``, what was
credited to the shop, in roubles. They differ by Robokassa's fee: with the fee on the shop (the
default tariff) ``IncSum`` is the invoice's amount and ``OutSum`` less; with the fee on the buyer
``OutSum`` is the invoice's amount and ``IncSum`` more. So the order's amount in either one is
the order's amount paid; when neither matches, ``OutSum`` (else ``IncSum``) is reported and the
amount check sends the order to a person. A paid answer with neither is malformed.

OpStateExt does not show refunds made later through the Refund API, so ``refunded`` is never
reported. HTTP 401/403 are :class:`CredentialsRejected`; 429 and 5xx
:class:`RobokassaUnavailableError`; any other non-200 answer, HTML pages and XML with a
DOCTYPE or entity declarations (refused before parsing: no entity expansion) are
:class:`MalformedResponse`.

**Settings.** ``MERCHANT_LOGIN`` (the shop identifier), ``PASSWORD1`` (signs pay URLs),
``PASSWORD2`` (verifies callbacks, signs OpStateExt), ``HASH`` (the algorithm chosen in the
shop's technical settings: md5, the default, ripemd160, sha1, sha256, sha384 or sha512),
``TEST`` (true: ``IsTest=1`` on pay URLs; Robokassa's test mode uses the separate test pair of
passwords from the technical settings, so set PASSWORD1/PASSWORD2 to those), ``API_URL``
(default ``https://auth.robokassa.ru/Merchant``: pay URLs are ``{API_URL}/Index.aspx``,
status calls ``{API_URL}/WebService/Service.asmx/OpStateExt``).

**Refunds** (issue #14; https://docs.robokassa.ru/ru/refund-api): ``POST
{REFUND_API_URL}/Refund/Create`` whose body is a JWT (HS256, signed with Password #3) over
``{"OpKey", "RefundSum"}``: the ``OpKey`` is OpStateExt's ``Info/OpKey`` (reported as
``psp_payment_id``), the sum always given, in roubles, exact. ``success: false`` is a final
refusal; an accepted one is pending under Robokassa's ``requestId``, read with ``GET
Refund/GetState?id=`` (``processing``, ``finished``, ``canceled``). Robokassa takes no key of
ours and finds refunds only by its ``requestId``: a refund whose answer was lost is never re-sent
(no ``idempotent_refund``, no ``refund_lookup``). Settings ``PASSWORD3`` (empty: no refunds) and
``REFUND_API_URL`` (empty: ``https://services.robokassa.ru/RefundService``, or
``{API_URL}/RefundService`` when API_URL is moved, as for a fake).

Robokassa has no cancel call and needs no lookup: building the pay URL again for the same order
gives the same URL, and nothing exists at Robokassa until the buyer opens it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode

from adapters.base import (
    Adapter,
    AdapterSettings,
    CanonicalState,
    Capabilities,
    CredentialsRejected,
    InvalidSettings,
    Invoice,
    Notification,
    NotificationResult,
    NotSupported,
    OrderRef,
    PollPolicy,
    PspRejected,
    PspRequest,
    PspResponse,
    RefundReport,
    RefundRequest,
    RefundState,
    Reply,
    SettingSpec,
    StatusReport,
)
from orders.errors import InvalidInput, TransientError
from orders.model import Order
from orders.money import Money
from orders.settings import flag

DEFAULT_API_URL = "https://auth.robokassa.ru/Merchant"
# The refund API lives on another host (https://docs.robokassa.ru/ru/refund-api).
DEFAULT_REFUND_API_URL = "https://services.robokassa.ru/RefundService"
REFUND_CREATE_PATH = "/Refund/Create"
REFUND_STATE_PATH = "/Refund/GetState"
# Refund/GetState's ``label``.
REFUND_LABELS = {
    "processing": RefundState.PENDING,
    "finished": RefundState.SUCCEEDED,
    "canceled": RefundState.FAILED,
}
PAY_PATH = "/Index.aspx"
OPSTATE_PATH = "/WebService/Service.asmx/OpStateExt"
CURRENCY = "RUB"
HASHES = ("md5", "ripemd160", "sha1", "sha256", "sha384", "sha512")
# Our order id rides along as a user parameter; Robokassa returns every Shp_ parameter.
SHP_ORDER_ID = "Shp_order_id"
DESCRIPTION_LIMIT = 100  # "Description ... maximum length 100 characters"
CULTURES = frozenset({"ru", "en"})

STATES: Mapping[int, tuple[CanonicalState, str]] = {
    5: (CanonicalState.PENDING, "initiated, no money received yet"),
    10: (CanonicalState.REJECTED, "cancelled, no money received"),
    20: (CanonicalState.PENDING, "on hold"),
    50: (CanonicalState.PENDING, "money received, being credited to the shop"),
    60: (CanonicalState.REJECTED, "money returned to the buyer"),
    80: (CanonicalState.PENDING, "suspended for checks by Robokassa"),
    100: (CanonicalState.PAID, "paid"),
}
RESULT_OK, RESULT_NO_INVOICE = 0, 3
_CREDENTIAL_RESULTS = {
    1: "Robokassa refused the request's signature: check PAYDISPATCH_ROBOKASSA_PASSWORD2 and "
    "PAYDISPATCH_ROBOKASSA_HASH (the shop's hash algorithm)",
    2: "Robokassa knows no active shop by this login: check PAYDISPATCH_ROBOKASSA_MERCHANT_LOGIN",
}
_UNAVAILABLE_RESULTS = {1000: "Robokassa's internal service error"}
_REFUSED_RESULTS = {
    4: "two operations share this InvoiceID (a test payment reused a live number)",
}

_DECLARATIONS = re.compile(r"<!\s*(doctype|entity)", re.IGNORECASE)


class RobokassaUnavailableError(TransientError):
    """Robokassa answered 429, a 5xx, or its internal-error result code: try again later."""


class RobokassaRefusedError(TransientError):
    """OpStateExt refused to tell (two operations share the number): never final."""


def hash_algorithm(settings: AdapterSettings) -> str:
    """The configured ``HASH``, lower case; :class:`InvalidSettings` for any other name."""
    algorithm = settings.get("HASH").strip().lower()
    if algorithm not in HASHES:
        raise InvalidSettings(
            f"PAYDISPATCH_ROBOKASSA_HASH must be one of {', '.join(HASHES)}, "
            f"got {settings.get('HASH')!r}"
        )
    return algorithm


def signature(algorithm: str, base: str) -> str:
    """Robokassa's signature: the lower-case hex digest of ``base`` (UTF-8)."""
    try:
        digest = hashlib.new(algorithm, base.encode("utf-8"))
    except ValueError:  # ripemd160 is missing from some OpenSSL builds
        raise InvalidSettings(
            f"PAYDISPATCH_ROBOKASSA_HASH {algorithm} is not available in this Python's OpenSSL"
        ) from None
    return digest.hexdigest()


def shp_suffix(params: Mapping[str, str]) -> str:
    """``:Shp_a=1:Shp_b=2`` for the user parameters in ``params``, sorted by key."""
    shp = sorted((k, v) for k, v in params.items() if k.lower().startswith("shp_"))
    return "".join(f":{key}={value}" for key, value in shp)


def payment_base(login: str, out_sum: str, inv_id: str, password1: str, shp: str = "") -> str:
    """What the pay URL's SignatureValue signs."""
    return f"{login}:{out_sum}:{inv_id}:{password1}{shp}"


def result_base(out_sum: str, inv_id: str, password2: str, shp: str = "") -> str:
    """What the Result URL callback's SignatureValue signs."""
    return f"{out_sum}:{inv_id}:{password2}{shp}"


def opstate_base(login: str, invoice_id: str, password2: str) -> str:
    """What OpStateExt's Signature signs."""
    return f"{login}:{invoice_id}:{password2}"


def same_signature(expected: str, received: str) -> bool:
    """Hex signatures equal whatever their case, compared in constant time."""
    return hmac.compare_digest(
        expected.strip().lower().encode("utf-8"), received.strip().lower().encode("utf-8")
    )


def format_out_sum(money: Money) -> str:
    """``OutSum``: roubles with a dot and kopecks, ``100.00``."""
    if money.currency != CURRENCY:
        raise InvalidInput(
            "currency",
            f"Robokassa takes payments in {CURRENCY} only, not {money.currency}",
        )
    return f"{money.to_decimal():.2f}"


def parse_out_sum(value: str, response: PspResponse, field: str = "OutSum") -> Money:
    """Money from an ``OutSum`` in any of Robokassa's formats; exact, never through a float."""
    try:
        return Money.parse(value.strip(), CURRENCY)
    except InvalidInput as exc:
        response.malformed(f"{field} {value!r}: {exc.message}")


def _xml_root(response: PspResponse) -> ET.Element:
    """The parsed answer; declarations refused before the parser sees them (no entities)."""
    try:
        text = response.content.decode("utf-8-sig")
    except UnicodeDecodeError:
        response.malformed("body is not UTF-8")
    if _DECLARATIONS.search(text):
        response.malformed("XML with a DOCTYPE or entity declaration is refused")
    try:
        return ET.fromstring(text)  # noqa: S314 - declarations refused above
    except ET.ParseError as exc:
        response.malformed(f"body is not XML ({exc}): {text[:80]!r}")


def _child(element: ET.Element, name: str) -> ET.Element | None:
    """The first child named ``name`` in any namespace (Robokassa's default namespace varies)."""
    for child in element:
        if child.tag == name or child.tag.endswith("}" + name):
            return child
    return None


def _text(element: ET.Element, *path: str) -> str | None:
    node: ET.Element | None = element
    for name in path:
        node = _child(node, name) if node is not None else None
    if node is None or node.text is None:
        return None
    return node.text.strip()


def _code(response: PspResponse, root: ET.Element, *path: str) -> int:
    value = _text(root, *path)
    if value is None:
        response.malformed(f"OpStateExt answer without {'/'.join(path)}")
    try:
        return int(value)
    except ValueError:
        response.malformed(f"{'/'.join(path)} is not a number: {value!r}")


def _check_http(response: PspResponse) -> None:
    code = response.status_code
    if code in {401, 403}:
        raise CredentialsRejected(
            f"Robokassa HTTP {code}: check PAYDISPATCH_ROBOKASSA_MERCHANT_LOGIN and PASSWORD2"
        )
    if code == 429 or code >= 500:
        raise RobokassaUnavailableError(f"Robokassa HTTP {code}")
    if code != 200:
        response.malformed("non-200 answer to OpStateExt")


def _paid_money(response: PspResponse, root: ET.Element, expected: Money | None) -> Money | None:
    """The amount an answer reports (module docstring, "Amount"); None when it states none."""
    sums = [
        parse_out_sum(value, response, f"Info/{name}")
        for name in ("OutSum", "IncSum")
        if (value := _text(root, "Info", name)) is not None
    ]
    if expected is not None and expected in sums:
        return expected
    return sums[0] if sums else None


def parse_opstate(
    response: PspResponse, psp_id: str | None, expected: Money | None = None
) -> StatusReport:
    """One canonical state from an OpStateExt answer (the tables in the module docstring).

    ``expected`` is the order's amount, looked for in both ``Info`` sums.
    """
    _check_http(response)
    root = _xml_root(response)
    local = root.tag.rsplit("}", 1)[-1]
    if local != "OperationStateResponse":
        response.malformed(f"expected OperationStateResponse, got <{local}>")
    result = _code(response, root, "Result", "Code")
    description = _text(root, "Result", "Description") or ""
    if result in _CREDENTIAL_RESULTS:
        raise CredentialsRejected(f"OpStateExt result {result}: {_CREDENTIAL_RESULTS[result]}")
    if result in _UNAVAILABLE_RESULTS:
        raise RobokassaUnavailableError(
            f"OpStateExt result {result}: {_UNAVAILABLE_RESULTS[result]} {description}".strip()
        )
    if result in _REFUSED_RESULTS:
        raise RobokassaRefusedError(f"OpStateExt result {result}: {_REFUSED_RESULTS[result]}")
    if result == RESULT_NO_INVOICE:
        # Nothing exists at Robokassa until the buyer opens the pay URL.
        return StatusReport(
            state=CanonicalState.PENDING,
            psp_id=psp_id,
            raw_status="result 3",
            reason="no operation yet: the buyer has not opened the pay page",
        )
    if result != RESULT_OK:
        response.malformed(f"undocumented OpStateExt result code {result}")
    state_code = _code(response, root, "State", "Code")
    if state_code not in STATES:
        response.malformed(f"undocumented OpStateExt state code {state_code}")
    state, meaning = STATES[state_code]
    money = _paid_money(response, root, expected)
    if state is CanonicalState.PAID and money is None:
        response.malformed("paid (state 100) without Info/OutSum or Info/IncSum")
    return StatusReport(
        state=state,
        psp_id=psp_id,
        money=money,
        raw_status=str(state_code),
        reason=meaning if state is not CanonicalState.PAID else "",
        # The operation's key, which a refund names (Refund/Create's OpKey).
        psp_payment_id=_text(root, "Info", "OpKey") or None,
    )


# -- refunds (issue #14) -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def refund_jwt(payload: str, password3: str) -> str:
    """The Refund API's request body: a JWT (HS256) over ``payload`` (JSON text) signed with
    Password #3 as the HMAC key."""
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
    body = _b64url(payload.encode("utf-8"))
    mac = hmac.new(password3.encode("utf-8"), f"{header}.{body}".encode("ascii"), "sha256")
    return f"{header}.{body}.{_b64url(mac.digest())}"


def _refund_body(response: PspResponse) -> Mapping[str, Any]:
    """The JSON object of a Refund API answer, its numbers kept exact (Decimal)."""
    code = response.status_code
    if code in {401, 403}:
        raise CredentialsRejected(
            f"Robokassa refund API HTTP {code}: check PAYDISPATCH_ROBOKASSA_PASSWORD3 and that "
            "the refund API is enabled for the shop"
        )
    if code == 429 or code >= 500:
        raise RobokassaUnavailableError(f"Robokassa refund API HTTP {code}")
    if code != 200:
        response.malformed("non-200 answer from the refund API")
    try:
        body = json.loads(response.content, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError, RecursionError):
        response.malformed(f"refund API answer is not JSON: {response.content[:80]!r}")
    if not isinstance(body, Mapping):
        response.malformed("refund API answer is not a JSON object")
    return body


def _refund_amount(value: Any, response: PspResponse) -> Money | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        response.malformed(f"refund amount is not a number: {value!r}")
    try:
        return Money.parse(Decimal(value), CURRENCY)
    except InvalidInput as exc:
        response.malformed(f"refund amount {value!r}: {exc.message}")


def _callback_fields(notification: Notification) -> dict[str, str]:
    """The callback's parameters: the form body, else the query string; UTF-8, no repeats."""
    response = PspResponse(status_code=200, content=notification.body)
    try:
        body = notification.body.decode("utf-8")
    except UnicodeDecodeError:
        response.malformed("Result URL callback is not UTF-8")
    pairs = parse_qsl(body, keep_blank_values=True) if body.strip() else []
    if not pairs:
        pairs = list(notification.query.items())
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields and fields[key] != value:
            response.malformed(f"Result URL callback repeats {key} with different values")
        fields[key] = value
    missing = [k for k in ("OutSum", "InvId", "SignatureValue") if not fields.get(k)]
    if missing:
        response.malformed(f"not a Robokassa Result URL callback (missing {', '.join(missing)})")
    if not re.fullmatch(r"[0-9]{1,19}", fields["InvId"]):
        response.malformed(f"InvId is not a number: {fields['InvId']!r}")
    return fields


class Robokassa(Adapter):
    """Robokassa's pay interface, Result URL and OpStateExt."""

    name: ClassVar[str] = "robokassa"
    capabilities: ClassVar[Capabilities] = Capabilities(
        idempotent_create=False,
        lookup_by_reference=False,
        cancel=False,
        notifications=True,
        signed_notifications=True,
        replayable_notifications=True,
        currencies=frozenset({CURRENCY}),
        default_expiry=timedelta(hours=1),
        poll=PollPolicy(first=timedelta(seconds=15), factor=2.0, cap=timedelta(minutes=5)),
        refunds=True,  # the Refund API: Refund/Create and Refund/GetState (issue #14)
        partial_refunds=True,  # RefundSum
        idempotent_refund=False,  # Refund/Create takes no key of ours
        refund_lookup=False,  # Refund/GetState knows only Robokassa's requestId
    )
    settings_spec: ClassVar[tuple[SettingSpec, ...]] = (
        SettingSpec("API_URL", default=DEFAULT_API_URL, help="Robokassa's Merchant base URL"),
        SettingSpec("MERCHANT_LOGIN", help="the shop identifier (MerchantLogin)"),
        SettingSpec("PASSWORD1", secret=True, help="Password #1: signs pay URLs"),
        SettingSpec(
            "PASSWORD2",
            secret=True,
            help="Password #2: verifies Result URL callbacks and signs OpStateExt",
        ),
        SettingSpec(
            "HASH",
            default="md5",
            help="the shop's signature algorithm: " + ", ".join(HASHES),
        ),
        SettingSpec(
            "TEST",
            default="false",
            help="true: IsTest=1 on pay URLs; use the shop's test passwords then",
        ),
        SettingSpec(
            "PASSWORD3",
            secret=True,
            default="",
            help="Password #3: signs refund requests (the refund API); empty: no refunds",
        ),
        SettingSpec(
            "REFUND_API_URL",
            default="",
            help=f"the refund API's base URL; empty: {DEFAULT_REFUND_API_URL} (or "
            "{API_URL}/RefundService when API_URL is not Robokassa's)",
        ),
    )

    def build_create(self, order: Order, settings: AdapterSettings) -> Invoice:
        out_sum = format_out_sum(order.money)
        if order.number <= 0:
            raise InvalidInput("number", f"Robokassa needs a positive InvId, got {order.number}")
        inv_id = str(order.number)
        login = settings.get("MERCHANT_LOGIN")
        shp = {SHP_ORDER_ID: str(order.id)}
        value = signature(
            hash_algorithm(settings),
            payment_base(login, out_sum, inv_id, settings.get("PASSWORD1"), shp_suffix(shp)),
        )
        description = order.description.strip() or f"Order {order.number}"
        params = [
            ("MerchantLogin", login),
            ("OutSum", out_sum),
            ("InvId", inv_id),
            ("Description", description[:DESCRIPTION_LIMIT]),
            ("SignatureValue", value),
        ]
        if flag("PAYDISPATCH_ROBOKASSA_TEST", settings.get("TEST"), error=InvalidSettings):
            params.append(("IsTest", "1"))
        culture = order.metadata.get("culture")
        if isinstance(culture, str) and culture.lower() in CULTURES:
            params.append(("Culture", culture.lower()))
        email = order.metadata.get("email")
        if isinstance(email, str) and "@" in email:
            params.append(("Email", email))
        params.extend(shp.items())
        pay_url = f"{settings.api_url}{PAY_PATH}?{urlencode(params)}"
        return Invoice(psp_id=inv_id, pay_url=pay_url)

    def parse_create(self, order: Order, response: PspResponse) -> Invoice:
        raise NotSupported("Robokassa has no create call: build_create returns the invoice")

    def build_status(self, order: Order, settings: AdapterSettings) -> PspRequest:
        invoice_id = order.psp_id or str(order.number)
        login = settings.get("MERCHANT_LOGIN")
        value = signature(
            hash_algorithm(settings),
            opstate_base(login, invoice_id, settings.get("PASSWORD2")),
        )
        return PspRequest(
            method="GET",
            url=f"{settings.api_url}{OPSTATE_PATH}",
            operation="status",
            params=[("MerchantLogin", login), ("InvoiceID", invoice_id), ("Signature", value)],
        )

    def parse_status(
        self,
        order: Order,
        response: PspResponse,
        settings: AdapterSettings,
        operation: str = "status",
    ) -> StatusReport:
        return parse_opstate(response, order.psp_id or str(order.number), order.money)

    # -- refunds (issue #14) -------------------------------------------------------------------

    @staticmethod
    def _refund_url(settings: AdapterSettings, path: str) -> str:
        """The refund API lives on its own host; unless ``REFUND_API_URL`` says where, it is
        Robokassa's while ``API_URL`` is, else under ``API_URL`` (a fake or proxy serving both)."""
        base = settings.get("REFUND_API_URL").strip().rstrip("/")
        if not base:
            moved = settings.api_url != DEFAULT_API_URL
            base = f"{settings.api_url}/RefundService" if moved else DEFAULT_REFUND_API_URL
        return base + path

    def build_refund(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        password3 = settings.get("PASSWORD3")
        if not password3:
            raise InvalidSettings(
                "PAYDISPATCH_ROBOKASSA_PASSWORD3 is empty: Robokassa's refund API needs it"
            )
        op_key = refund.psp_payment_id
        if not op_key:
            raise InvalidInput(
                "psp_payment_id", "a Robokassa refund needs the payment's OpKey (OpStateExt)"
            )
        # RefundSum always: without it Robokassa refunds whatever is left, which a repeated
        # request must never do. Written by hand so the amount stays exact (no float).
        payload = f'{{"OpKey":{json.dumps(op_key)},"RefundSum":{format_out_sum(refund.money)}}}'
        return PspRequest(
            method="POST",
            url=self._refund_url(settings, REFUND_CREATE_PATH),
            operation="refund",
            headers={"Content-Type": "text/plain"},
            content=refund_jwt(payload, password3).encode("ascii"),
        )

    def parse_refund(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        body = _refund_body(response)
        success, request_id = body.get("success"), body.get("requestId")
        if success is False:
            # NotEnoughOperationFunds, OperationNotFound, AlreadyRefunded...: nothing was made.
            raise PspRejected(f"Robokassa refused the refund: {body.get('message') or 'no reason'}")
        if success is not True:
            response.malformed("refund answer without success true/false")
        if not isinstance(request_id, str) or not request_id:
            response.malformed("accepted refund without a requestId")
        # Accepted, not done: Refund/GetState tells when it is (the answer names no amount).
        return RefundReport(RefundState.PENDING, psp_refund_id=request_id, raw_status="created")

    def build_refund_status(self, refund: RefundRequest, settings: AdapterSettings) -> PspRequest:
        if not refund.psp_refund_id:
            raise InvalidInput("psp_refund_id", f"refund {refund.id} has no Robokassa requestId")
        return PspRequest(
            method="GET",
            url=self._refund_url(settings, REFUND_STATE_PATH),
            operation="refund_status",
            params=[("id", refund.psp_refund_id)],
        )

    def parse_refund_status(
        self, refund: RefundRequest, response: PspResponse, settings: AdapterSettings
    ) -> RefundReport:
        body = _refund_body(response)
        label = body.get("label")
        if label is None and body.get("message"):
            raise RobokassaRefusedError(f"Refund/GetState: {body['message']}")
        if label not in REFUND_LABELS:
            response.malformed(f"unknown refund label {label!r}")
        request_id = body.get("requestId")
        if request_id is not None and request_id != refund.psp_refund_id:
            response.malformed(f"answer is about refund {request_id!r}, not {refund.psp_refund_id}")
        return RefundReport(
            REFUND_LABELS[label],
            psp_refund_id=refund.psp_refund_id,
            money=_refund_amount(body.get("amount"), response),
            raw_status=str(label),
        )

    def parse_notification(
        self, notification: Notification, settings: AdapterSettings
    ) -> NotificationResult:
        fields = _callback_fields(notification)
        out_sum, inv_id = fields["OutSum"], fields["InvId"]
        expected = signature(
            hash_algorithm(settings),
            result_base(out_sum, inv_id, settings.get("PASSWORD2"), shp_suffix(fields)),
        )
        if not same_signature(expected, fields["SignatureValue"]):
            return NotificationResult(
                ref=OrderRef(),
                verified=False,
                reply=Reply(400, b"bad signature"),
            )
        response = PspResponse(status_code=200, content=notification.body)
        money = parse_out_sum(out_sum, response)
        report = StatusReport(
            state=CanonicalState.PAID,
            psp_id=inv_id,
            money=money,
            raw_status="result url",
        )
        order_id = next(
            (v for k, v in fields.items() if k.lower() == SHP_ORDER_ID.lower()),
            None,
        )
        return NotificationResult(
            ref=OrderRef(order_id=order_id, number=int(inv_id), psp_id=inv_id),
            verified=True,
            report=report,
            reply=Reply(200, f"OK{inv_id}".encode("ascii")),
        )


adapter = Robokassa()
