"""Model upgrade without a re-enrolment campaign: shadow voiceprints for the next speaker model.

Audio is never kept, so a new model's voiceprint can only grow from new speech. With
``VoiceAuth(..., shadow_model="campplus")`` the speech of every verification that ends ACCEPT
and of every live call that ends AUTHENTICATED (and was not withdrawn) is embedded a second
time by the next model and added to the customer's *shadow* voiceprint
(:attr:`~voiceauth.store.base.Namespace.SHADOW`, encrypted like any voiceprint, audited as
``shadow_enroll``). The current model alone still decides. Only speech that already passed
verification (and the spoof check) feeds a shadow, so an impostor's voice cannot seed one.

Once a shadow holds the enrolment's speech (``enrol_speech_s``) it is complete. When the
deployment then runs the next model (``VoiceAuth(..., embedder="campplus")``), a customer whose
voiceprint is still the old model's is upgraded on first use: the complete shadow replaces the
voiceprint (audited ``model_upgrade``) and the shadow row goes. A customer without a complete
shadow cannot be scored by the new model (ModelMismatchError: the caller answers the questions,
and the message says how much speech the shadow holds). :func:`status` is the coverage report
to decide when to switch (``voiceauth models shadow-status``).

Erasing a customer (delete, opt-out, retention purge) erases the shadow in the same
transaction; a shadow is never written for a customer without a voiceprint or who opted out.
Re-enrolling a customer from scratch (``replace=True``) discards their shadow: the speech it
grew from was verified against the voiceprint being replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from voiceauth.errors import ErasureIncompleteError, ModelMismatchError, NotEnrolledError, VoiceAuthError
from voiceauth.services.core import ShadowModel
from voiceauth.services.enrolment import EnrolMode, pool, write
from voiceauth.store.base import AuditRecord, Namespace, StreamingStore, Voiceprint

if TYPE_CHECKING:
    from voiceauth.services.core import Services

__all__ = ["ShadowModel", "ShadowStatus", "discard", "grow", "load", "promote", "status"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowStatus:
    """How far the move to ``model_id`` has come: the numbers to decide when to switch."""

    model_id: str
    customers: int
    """Customers with a voiceprint (of any model; enrolments in progress included)."""
    on_model: int
    """Of them, already on ``model_id`` (upgraded, or enrolled with it)."""
    shadows_complete: int
    """Shadow voiceprints of ``model_id`` ready to take over."""
    shadows_in_progress: int

    @property
    def ready(self) -> float:
        """Share of customers who would be verifiable by ``model_id`` now."""
        return (self.on_model + self.shadows_complete) / self.customers if self.customers else 1.0


def grow(services: Services, customer_id: str, speech: Sequence[np.ndarray], seconds: Sequence[float],
         current_model_id: str) -> Voiceprint | None:
    """Add authenticated ``speech`` (with its net ``seconds``) to the customer's shadow voiceprint.

    Does nothing without a shadow model, when the customer's voiceprint (``current_model_id``) is
    already the shadow model's, or once the shadow is complete. Never raises: a shadow that cannot
    grow is logged, and the decision it follows stands (it was made by the current model alone).
    """
    shadow = services.shadow
    if shadow is None or not speech:
        return None
    model_id = shadow.embedder.model_id
    if model_id == current_model_id:
        return None
    try:
        existing = services.store.get(Namespace.SHADOW, customer_id)
        if existing is not None and existing.complete and existing.model_id == model_id:
            return existing
        if existing is not None and existing.model_id != model_id:  # a shadow of an earlier next model
            discard(services, customer_id, "replaced")
        new = pool(shadow.embedder.embed(list(speech)), list(seconds))
        return write(services, Namespace.SHADOW, customer_id, new, model_id=model_id, mode=EnrolMode.UPDATE,
                     required_s=services.enrol_speech_s, action="shadow_enroll")
    except NotEnrolledError:
        return None  # erased or opted out meanwhile: nothing to grow
    except (VoiceAuthError, RuntimeError, OSError, ValueError) as exc:
        log.warning("shadow voiceprint of %s for %s not updated: %s", customer_id, model_id, exc)
        return None


def discard(services: Services, customer_id: str, why: str) -> bool:
    """Delete the customer's shadow voiceprint, if any (audited ``shadow_delete``, outcome ``why``):
    its speech no longer counts, e.g. after a re-enrolment from scratch."""
    if services.store.get(Namespace.SHADOW, customer_id) is None:
        return False
    try:
        return services.store.delete(Namespace.SHADOW, customer_id,
                                     event=AuditRecord("shadow_delete", customer_id, why, services.actor))
    except ErasureIncompleteError:  # deleted; a copy left in the WAL is the customer's own, not erased data
        return True


def load(services: Services, customer_id: str) -> Voiceprint:
    """The customer's complete voiceprint for the current model: their own, or their complete shadow
    of it, promoted now (:func:`promote`). NotEnrolledError / ModelMismatchError otherwise."""
    voiceprint = services.load_voiceprint(customer_id, any_model=True)
    if voiceprint.model_id == services.embedder.model_id:
        return voiceprint
    return promote(services, customer_id, voiceprint)


def promote(services: Services, customer_id: str, voiceprint: Voiceprint) -> Voiceprint:
    """``voiceprint`` (another model's) replaced by the customer's complete shadow of the current model.

    Raises:
        ModelMismatchError: no complete shadow of the current model; says how far it is.
    """
    model_id = services.embedder.model_id
    shadow = services.store.get(Namespace.SHADOW, customer_id)
    if shadow is None or shadow.model_id != model_id or not shadow.complete:
        progress = ("no shadow voiceprint of it" if shadow is None or shadow.model_id != model_id
                    else f"its shadow voiceprint of that model holds {shadow.speech_s:.1f} of "
                         f"{services.enrol_speech_s:.0f} s of speech")
        raise ModelMismatchError(
            f"{customer_id}'s voiceprint was made by model {voiceprint.model_id}, not {model_id}, and there is "
            f"{progress}; score with {voiceprint.model_id} (with shadow_model set to keep the shadow growing) "
            "or re-enrol the customer with replace=True"
        )
    old_model = voiceprint.model_id

    def build(current: Voiceprint | None) -> Voiceprint:
        if current is None:
            raise NotEnrolledError(f"customer {customer_id} is not enrolled; enrol them first (voiceauth enroll)")
        if current.model_id == model_id:
            return current  # another process upgraded it first
        return dataclasses.replace(shadow, namespace=Namespace.CUSTOMER, created_at=current.created_at,
                                   last_used_at=current.last_used_at, meta=current.meta)

    event = AuditRecord("model_upgrade", customer_id, "upgraded", services.actor,
                        {"from": old_model, "to": model_id, "speech_s": round(shadow.speech_s, 1),
                         "recordings": shadow.recordings})
    upgraded = services.store.upsert(Namespace.CUSTOMER, customer_id, build, event=event)
    with contextlib.suppress(ErasureIncompleteError):  # a leftover copy is the live voiceprint's, not erased data
        services.store.delete(Namespace.SHADOW, customer_id,
                              event=AuditRecord("shadow_delete", customer_id, "promoted", services.actor))
    services.forget(customer_id)
    return upgraded


def status(services: Services) -> ShadowStatus:
    """The coverage of the shadow model (or, without one, of the current model), counted in the store."""
    store = services.store
    model_id = (services.shadow.embedder if services.shadow is not None else services.embedder).model_id
    if isinstance(store, StreamingStore):  # counts in the database: a million customers stay cheap
        customers, on_model = store.count(Namespace.CUSTOMER), store.count(Namespace.CUSTOMER, model_id)
        complete = store.count(Namespace.SHADOW, model_id)
        in_progress = store.count(Namespace.SHADOW) - complete
    else:
        infos = store.list(Namespace.CUSTOMER)
        shadows = [i for i in store.list(Namespace.SHADOW) if i.model_id == model_id]
        customers = len(infos)
        on_model = sum(1 for i in infos if i.complete and i.model_id == model_id)
        complete = sum(1 for i in shadows if i.complete)
        in_progress = len(shadows) - complete
    return ShadowStatus(model_id, customers, on_model, complete, in_progress)
