"""Every reason a node refuses (or ignores) peer input: the one vocabulary, in one place.

A batch from a peer passes three stages, and each stage names its refusals with one enum:

1. wire decode (fai_core.wire, fai_core.dagcbor, fai_core.experience): `Reject`, carried by
   `WireError`. Size, CBOR, schema, CID, Ed25519 signature, and the value rules of every
   field; `stale`/`future` when a caller checks freshness with `wire.check_freshness`.
2. admission, the gate every batch passes before it is stored or forwarded
   (fai_net.admission: gate, membership, budgets; the node's queue room): `Refusal` for
   a refusal, `Ignore` for a batch that is not new or not wanted but not wrong. The gate
   passes a decode failure on with its `Reject` value.
3. DeltaSoup (fai_core.deltasoup), when the node merges what the gate stored: `Drop`, for
   a whole batch (phase 1) or one experience (phase 3). `CHARGED` are the drops that cost
   the sender reputation, `UNCHARGED` the rest.

Values are stable: they are Prometheus metric labels (`fai_batches_rejected`,
`fai_experiences_dropped`) and log text, and tests and docs pin them: never change one.

Where two stages share a word (`SHARED`: e.g. `stale`, `future`, `equivocation`,
`low_reputation`) it names the same finding, checked again at a later stage, so one
metric label counts one kind of event wherever it was found. Whom a finding is charged
to is each stage's own policy (docs/node.md, docs/deltasoup.md). A new word in two enums
must be added to `SHARED` (tests/core/test_refusals.py checks it), so a clash is a
decision and never an accident.
"""

from __future__ import annotations

from enum import StrEnum


class Reject(StrEnum):
    """Why a batch from the wire was refused. Values are stable: metrics are labelled by them."""

    OVERSIZE = "oversize"
    MALFORMED_CBOR = "malformed_cbor"
    NON_CANONICAL = "non_canonical"
    SCHEMA = "schema"
    UNKNOWN_VERSION = "unknown_version"
    CID_MISMATCH = "cid_mismatch"
    BAD_SIGNATURE = "bad_signature"
    BAD_KEY = "bad_key"
    TOO_MANY_EXPERIENCES = "too_many_experiences"
    BAD_DIMENSION = "bad_dimension"
    SHAPE_MISMATCH = "shape_mismatch"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_PADDING = "bad_padding"
    TEXT_TOO_LONG = "text_too_long"
    BAD_TEXT = "bad_text"
    BAD_DOMAIN = "bad_domain"
    BAD_MODEL = "bad_model"
    DUPLICATE_EXPERIENCE = "duplicate_experience"
    STALE = "stale"
    FUTURE = "future"


class Refusal(StrEnum):
    """Why the gate (fai_net.admission) refused a batch that decoded and verified.

    Stable metric labels. Which ones may pass later is the gate's policy
    (`fai_net.admission.gate.TEMPORARY_REFUSALS`).
    """

    #: A repair reply carrying a CID the node did not ask for.
    UNREQUESTED = "unrequested"
    #: The batch's domain is not the domain of the topic it arrived on.
    TOPIC_MISMATCH = "topic_mismatch"
    #: Model, dimension or BitDelta group size is not the fleet's.
    WRONG_MODEL = "wrong_model"
    STALE = "stale"
    FUTURE = "future"
    #: Membership (fai_net.admission.membership): the sender is no live operator...
    NOT_MEMBER = "not_member"
    #: ...or the batch lacks its operator's header signature...
    NO_OPERATOR_SIG = "no_operator_sig"
    #: ...or that signature is not its operator's (nor a signer bound to it).
    BAD_OPERATOR_SIG = "bad_operator_sig"
    #: A second CID for a stored (sender, seq).
    EQUIVOCATION = "equivocation"
    #: A seq far behind the sender's newest (gossip only).
    OLD_SEQ = "old_seq"
    LOW_REPUTATION = "low_reputation"
    #: Receive budgets (fai_net.admission.budgets).
    SENDER_BUDGET = "sender_budget"
    FORWARDER_BUDGET = "forwarder_budget"
    #: No room in the node's pending queue.
    BUSY = "busy"
    #: An unexpected error inside the gate (logged with its traceback).
    INTERNAL = "internal"
    #: A copy of a message the gate refused moments ago, refused again before decoding
    #: (fai_net.admission.gate.RefusalCache); whoever forwards it was charged the first time.
    REFUSED_AGAIN = "refused_again"
    #: Not a finding about a batch: a merge round failed inside this node. Its batches stay
    #: unmerged in the store and are queued again at the next start; counted with the rest.
    ROUND_ERROR = "round_error"


class Ignore(StrEnum):
    """Why the gate ignored a batch: not new or not wanted, but not wrong. Nobody is charged."""

    #: The CID is already stored.
    DUPLICATE = "duplicate"
    #: The node does not subscribe to the batch's domain.
    UNSUBSCRIBED = "unsubscribed"


class Drop(StrEnum):
    """Why a batch (phase 1) or an experience (phase 3) was not merged. Stable metric labels."""

    WRONG_MODEL = "wrong_model"
    STALE = "stale"
    FUTURE = "future"
    REPLAY = "replay"
    EQUIVOCATION = "equivocation"
    OLD_SEQ = "old_seq"
    LOW_REPUTATION = "low_reputation"
    OVER_CAP = "over_cap"
    SEMANTIC_MISMATCH = "semantic_mismatch"
    SCALE_MISMATCH = "scale_mismatch"
    SCALE_OUTLIER = "scale_outlier"
    QUALITY_OUTLIER = "quality_outlier"
    DOMAIN_MISMATCH = "domain_mismatch"
    #: Not a refusal: over the round's cap, held in the sender's backlog for a later round.
    DEFERRED = "deferred"
    #: The text tripped the local steering screen (fai_core.text_screen): a keyword
    #: heuristic, so uncharged.
    STEERING = "steering"


#: Refusals this node proves from the signed batch alone, against its own model and rules:
#: the only ones that cost the sender reputation (docs/deltasoup.md, "What costs
#: reputation"). The sender signed the batch, and the receiver re-embeds the texts itself.
CHARGED = frozenset(
    {Drop.WRONG_MODEL, Drop.EQUIVOCATION, Drop.SEMANTIC_MISMATCH, Drop.SCALE_MISMATCH}
)
#: Refusals that cost nobody anything. Relative ones (scale_outlier, quality_outlier,
#: domain_mismatch) compare a sender with the round's other senders, whose statistics
#: Sybils choose; stale, future, replay and old_seq depend on delivery and clocks, and
#: anyone can re-publish a signed batch late or twice; low_reputation, over_cap and
#: deferred are consequences of budgets, not findings; steering is a keyword heuristic that
#: an honest text can trip, so it proves nothing about the sender. Rows are still dropped.
UNCHARGED = frozenset(Drop) - CHARGED


class Muted(StrEnum):
    """Why the node set aside an experience DeltaSoup merged: its own agents' verdict on the
    source, not a finding about the batch. Counted with the drops; nobody is charged."""

    #: The source's lessons kept hurting this node's agents (fai_net.api.outcome_book).
    OUTCOME_MUTED = "outcome_muted"


#: Every enum above, by stage order.
VOCABULARIES: tuple[type[StrEnum], ...] = (Reject, Refusal, Ignore, Drop, Muted)

#: Words used by more than one enum, each naming the same finding in every one of them:
#: freshness (stale, future), the fleet's model, a sender's sequence (equivocation,
#: old_seq) and the reputation floor, checked by the gate and again by DeltaSoup.
SHARED = frozenset({"stale", "future", "wrong_model", "equivocation", "old_seq", "low_reputation"})
