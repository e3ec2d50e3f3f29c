"""Training progress of a submitted job as Prometheus metrics (for the compose/k8s submitter)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, start_http_server


class ProgressMetrics:
    def __init__(self, port: int, kind: str, addr: str = "0.0.0.0"):
        self.kind = kind
        self.registry = CollectorRegistry()
        self.round = Gauge("fedtune_training_round", "last completed federated round", ["kind"],
                           registry=self.registry)
        self.rounds = Gauge("fedtune_training_rounds_total", "rounds the job will run", ["kind"], registry=self.registry)
        self.site_metric = Gauge("fedtune_training_site_metric", "a site's validation metric after the last round",
                                 ["kind", "site", "metric"], registry=self.registry)
        self.missing = Gauge("fedtune_training_missing_sites", "sites that did not answer the last round",
                             ["kind"], registry=self.registry)
        self.state = Gauge("fedtune_training_state", "1 for the current state of the job", ["kind", "state"],
                           registry=self.registry)
        self._set_state("running")
        start_http_server(port, addr=addr, registry=self.registry)

    def _set_state(self, state: str) -> None:
        for s in ("running", "finished", "failed"):
            self.state.labels(self.kind, s).set(1 if s == state else 0)

    def update(self, ev: dict) -> None:
        if ev.get("event") == "start":
            self.rounds.labels(self.kind).set(ev.get("rounds", 0))
        if ev.get("event") == "round":
            self.round.labels(self.kind).set(ev["round"])
            self.missing.labels(self.kind).set(len(ev.get("missing", [])))
            for site, metrics in ev.get("sites", {}).items():
                for name, value in metrics.items():
                    if isinstance(value, (int, float)):
                        self.site_metric.labels(self.kind, site, name).set(value)

    def finished(self) -> None:
        self._set_state("finished")

    def failed(self) -> None:
        self._set_state("failed")
