"""Prometheus metrics of one service (its own registry, served at ``/metrics``)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from voiceauth.live import CallResult
from voiceauth.results import Flag

LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
                   10.0)
WAIT_BUCKETS = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """What an operator watches: live calls, decisions, latency, dropped audio, fraud hits."""

    def __init__(self, live_calls: Callable[[], float], streams: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("voiceauth_live_calls", "Live calls holding resources in the session pool",
              registry=r).set_function(live_calls)
        Gauge("voiceauth_open_streams", "Open streaming connections", registry=r).set_function(streams)
        self.streams_total = Counter("voiceauth_streams_ended_total", "Streams ended, by protocol and how they ended",
                                     ["protocol", "outcome"], registry=r)
        self.decisions = Counter("voiceauth_decisions_total",
                                 "Decisions: live call status changes and REST verifications, by status",
                                 ["source", "status"], registry=r)
        self.latency = Histogram("voiceauth_decision_latency_seconds",
                                 "Live calls: seconds from the last frame of a speech segment being fed to its "
                                 "scored update; stage deciding (the call's decision may depend on it) or watch "
                                 "(a settled call: the watch over an AUTHENTICATED call, an unmatched call), "
                                 "which waits behind the deciding ones", ["stage"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        for stage in ("deciding", "watch"):
            self.latency.labels(stage)  # both series from the start, zero until observed
        self.to_authenticated = Histogram("voiceauth_call_seconds_to_authenticated",
                                          "Live calls: seconds from the stream's start to AUTHENTICATED (what the "
                                          "agent waits for: the caller's speech, the queues and the spoof check)",
                                          buckets=WAIT_BUCKETS, registry=r)
        self.spoof_latency = Histogram("voiceauth_spoof_check_latency_seconds",
                                       "Live calls: seconds from queueing a spoof check to its verdict",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.dropped_audio = Counter("voiceauth_dropped_audio_seconds_total",
                                     "Audio seconds of live calls dropped unprocessed (workers fell behind)",
                                     registry=r)
        self.thinned = Counter("voiceauth_thinned_speech_seconds_total",
                               "Speech of decided live calls heard but not embedded while the model was pressed "
                               "(SessionSettings.pressed_stride)", registry=r)
        self.spoof_hits = Counter("voiceauth_spoof_suspected_total", "Calls and verifications flagged as spoofs",
                                  ["source"], registry=r)
        self.watchlist_hits = Counter("voiceauth_watchlist_hits_total",
                                      "Calls and verifications matching a watchlist entry", ["source"], registry=r)
        self.protocol_errors = Counter("voiceauth_stream_protocol_errors_total",
                                       "Streams closed for a protocol error, by WebSocket close code",
                                       ["protocol", "code"], registry=r)
        self.requests = Counter("voiceauth_http_requests_total", "REST requests by route and status",
                                ["route", "status"], registry=r)

    def flags(self, source: str, flags: tuple[Flag, ...] | list[Flag]) -> None:
        if Flag.SPOOF_SUSPECTED in flags:
            self.spoof_hits.labels(source).inc()
        if Flag.FRAUDSTER_MATCH in flags:
            self.watchlist_hits.labels(source).inc()

    def call_ended(self, result: CallResult) -> None:
        self.dropped_audio.inc(result.dropped_audio_s)
        self.thinned.inc(result.thinned_under_load_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
