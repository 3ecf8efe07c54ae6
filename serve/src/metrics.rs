//! `GET /metrics`: Prometheus text. HTTP requests by route and status and their latency are
//! counted here, as they are answered; the node's own counters (commands, admissions by
//! result code, OCC conflicts, dead letters, timers), its store's append latency and the
//! outstanding grant exposure are read from the node at each scrape.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tollgate_runtime::quota::EdgeReport;
use tollgate_runtime::{AppendLatency, Stats};

use crate::exposure::Held;

/// What the node reports at a scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeReading {
    /// Every runtime's counters, summed.
    pub(crate) stats: Stats,
    /// How long the store's appends took.
    pub(crate) appends: AppendLatency,
    /// Money held by open grants, by currency.
    pub(crate) exposure: BTreeMap<String, Held>,
    /// Account events the exposure could not fold.
    pub(crate) undecodable: u64,
    /// On an edge: the grants it holds and the usage it owes.
    pub(crate) edge: Option<EdgeReport>,
    /// Keys moved off a worker busy with one request for longer than the reroute threshold.
    pub(crate) rerouted: u64,
    /// Workers busy with one request for longer than the reroute threshold now.
    pub(crate) stuck_workers: usize,
    /// Events committed and not yet delivered to the projectors and process managers.
    pub(crate) backlog_events: u64,
    /// Timers due and not yet fired.
    pub(crate) backlog_timers: u64,
    /// Requests waiting for a worker.
    pub(crate) waiting: usize,
    /// The embedded log's records and fsyncs (`None` on JetStream).
    pub(crate) writes: Option<tollgate_store::FileStats>,
}

/// Labels of one HTTP request: the route template (never the raw path, so keys do not
/// become series), the method and the status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

/// Labels of a latency series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

type LatencyFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// Label of a connection the server closed itself, or of a request refused for its token.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// A server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    in_flight: Gauge,
    /// HTTP connections open now.
    pub(crate) connections: Gauge,
    /// The cap on open HTTP connections.
    pub(crate) connections_limit: Gauge,
    closed: Family<ReasonLabel, Counter>,
    /// Bytes of request bodies held now (being received, waiting or being answered).
    pub(crate) body_bytes: Gauge,
    /// The node-wide budget for those bytes.
    pub(crate) body_budget: Gauge,
    refusals: Family<ReasonLabel, Counter>,
    insecure: Gauge,
    node: Arc<Mutex<NodeReading>>,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s: an admission is tens of µs warm, a cold actor or a slow store seconds.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        let in_flight = Gauge::default();
        let node = Arc::new(Mutex::new(NodeReading::default()));
        registry.register(
            "tollgate_http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "tollgate_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            latency.clone(),
        );
        registry.register("tollgate_http_in_flight", "Requests being answered now", in_flight.clone());
        let (connections, connections_limit, body_bytes, body_budget) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
        let closed = Family::<ReasonLabel, Counter>::default();
        registry.register("tollgate_http_connections", "HTTP connections open now", connections.clone());
        registry.register(
            "tollgate_http_connections_limit",
            "The cap on open HTTP connections (from the descriptor limit, or --max-connections)",
            connections_limit.clone(),
        );
        registry.register(
            "tollgate_http_connections_closed",
            "HTTP connections the server closed itself, by reason (evicted: the oldest idle one at the cap; refused: at the cap with none idle; header-timeout; idle-timeout)",
            closed.clone(),
        );
        registry.register(
            "tollgate_http_body_bytes",
            "Bytes of request bodies held now, received or being received",
            body_bytes.clone(),
        );
        registry.register(
            "tollgate_http_body_budget_bytes",
            "The node-wide budget for bytes of request bodies held; beyond it a request is answered 503",
            body_budget.clone(),
        );
        let refusals = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tollgate_auth_refusals",
            "Requests refused for their access token (401) or its scope (403), by reason",
            refusals.clone(),
        );
        let insecure = Gauge::default();
        registry.register(
            "tollgate_insecure",
            "1 when the node was started with --insecure (beyond loopback without TLS or tokens)",
            insecure.clone(),
        );
        registry.register_collector(Box::new(NodeCounters(node.clone())));
        Metrics {
            registry,
            requests,
            latency,
            in_flight,
            connections,
            connections_limit,
            closed,
            body_bytes,
            body_budget,
            refusals,
            insecure,
            node,
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels { route: route.into(), method: method.into(), status };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&RouteLabel { route: route.into() }).observe(seconds);
    }

    /// Counts a connection the server closed itself.
    pub(crate) fn connection_closed(&self, why: crate::connections::Closed) {
        self.closed.get_or_create(&ReasonLabel { reason: why.label() }).inc();
    }

    /// Counts a request refused for its token, by `reason`.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Says the node runs with `--insecure`.
    pub(crate) fn insecure(&self) {
        self.insecure.set(1);
    }

    /// The Prometheus text of every metric, with the node as read at this scrape.
    pub(crate) fn render(&self, reading: NodeReading) -> String {
        *self.node.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = reading;
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Middleware counting every request by the route that matched (`unmatched` for none).
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = request.method().to_string();
    let start = Instant::now();
    metrics.in_flight.inc();
    let response = next.run(request).await;
    metrics.in_flight.dec();
    metrics.observe(&route, &method, response.status().as_u16(), start.elapsed().as_secs_f64());
    response
}

/// The node's counters, encoded at each scrape from the last reading of the node.
#[derive(Debug)]
struct NodeCounters(Arc<Mutex<NodeReading>>);

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let value = ConstCounter::new(value);
    value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
}

fn counter_family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a String, &'a u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in values {
        ConstCounter::new(*count).encode(family.encode_family(&[(label, value.as_str())])?)?;
    }
    Ok(())
}

impl Collector for NodeCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let reading = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let (s, e) = (&reading.stats, &mut encoder);
        counter(e, "tollgate_commands_accepted", "Commands that appended events", s.accepted)?;
        counter_family(e, "tollgate_commands_rejected", "Commands refused, by rejection code", "code", &s.rejected)?;
        counter_family(
            e,
            "tollgate_reaction_commands_refused",
            "Commands process managers sent that an aggregate refused (each told to its manager), by rejection code",
            "code",
            &s.reaction_refusals,
        )?;
        counter(e, "tollgate_commands_duplicate", "Commands answered from the log as duplicates", s.duplicates)?;
        counter(e, "tollgate_occ_conflicts", "Appends that lost an optimistic-concurrency race", s.occ_conflicts)?;
        counter_family(e, "tollgate_admissions", "Admission decisions, by result code", "result", &s.result_codes)?;
        counter(
            e,
            "tollgate_delivery_failures",
            "Deliveries projectors and process managers failed",
            s.delivery_failures,
        )?;
        counter(e, "tollgate_dead_letters", "Deliveries moved to the dead letters", s.dead_lettered)?;
        counter(e, "tollgate_timers_fired", "Timers fired", s.timers_fired)?;
        counter(e, "tollgate_snapshots", "Snapshots written", s.snapshots)?;
        counter(
            e,
            "tollgate_worker_reroutes",
            "Keys moved off a worker busy with one request past the reroute threshold",
            reading.rerouted,
        )?;
        e.encode_descriptor(
            "tollgate_workers_stuck",
            "Workers busy with one request for longer than the reroute threshold now",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&saturate(reading.stuck_workers as u64))?;
        for (name, help, value) in [
            (
                "tollgate_backlog_events",
                "Events committed and not yet delivered to the projectors and process managers",
                reading.backlog_events,
            ),
            ("tollgate_backlog_timers", "Timers due and not yet fired", reading.backlog_timers),
            ("tollgate_requests_waiting", "Requests waiting for a worker", reading.waiting as u64),
        ] {
            e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&saturate(value))?;
        }
        if let Some(writes) = reading.writes {
            counter(e, "tollgate_store_records", "Records the embedded log wrote", writes.records)?;
            counter(
                e,
                "tollgate_store_syncs",
                "fdatasync calls of the embedded log (one per group commit)",
                writes.syncs,
            )?;
        }

        let appends = &reading.appends;
        let mut histogram = e.encode_descriptor(
            "tollgate_store_append_duration_seconds",
            "Time an append to the event store took (the group commit's fsync included)",
            None,
            MetricType::Histogram,
        )?;
        histogram.encode_histogram::<Vec<(String, String)>>(
            appends.sum_seconds,
            appends.count,
            &appends.buckets,
            None,
        )?;

        // Held money can exceed i64 summed over many accounts; the gauge saturates, the
        // exposure itself does not wrap.
        let saturate = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        let mut held = e.encode_descriptor(
            "tollgate_grant_exposure_minor_units",
            "Money held by open reservations over every account in the store, by currency",
            None,
            MetricType::Gauge,
        )?;
        for (currency, h) in &reading.exposure {
            held.encode_family(&[("currency", currency.as_str())])?.encode_gauge(&saturate(h.minor_units))?;
        }
        let mut grants =
            e.encode_descriptor("tollgate_grants_open", "Open reservations, by currency", None, MetricType::Gauge)?;
        for (currency, h) in &reading.exposure {
            grants.encode_family(&[("currency", currency.as_str())])?.encode_gauge(&saturate(i128::from(h.grants)))?;
        }
        let mut unpaid = e.encode_descriptor(
            "tollgate_usage_unpaid_minor_units",
            "Usage charged that the accounts' money did not cover (usage-charged events' unpaid), by currency",
            None,
            MetricType::Gauge,
        )?;
        for (currency, h) in &reading.exposure {
            unpaid.encode_family(&[("currency", currency.as_str())])?.encode_gauge(&saturate(h.unpaid))?;
        }
        counter(
            e,
            "tollgate_grant_exposure_undecodable_events",
            "Account events the exposure could not fold (another schema or damage): the figure misses them",
            reading.undecodable,
        )?;
        match &reading.edge {
            Some(edge) => encode_edge(e, edge),
            None => Ok(()),
        }
    }
}

/// An edge's figures, labelled with the node (and the currency of money).
fn encode_edge(e: &mut DescriptorEncoder, edge: &EdgeReport) -> std::fmt::Result {
    let node = vec![("node", edge.node.as_str())];
    let money = vec![("node", edge.node.as_str()), ("currency", edge.currency.as_str())];
    type Labels<'a> = Vec<(&'a str, &'a str)>;
    let gauges: [(&str, &str, &Labels, i64); 5] = [
        (
            "tollgate_edge_grants_held",
            "Grants this edge holds and has not settled with its core",
            &node,
            saturate(edge.grants_held as u64),
        ),
        (
            "tollgate_edge_exposure_minor_units",
            "Money the core holds for this edge's unsettled grants",
            &money,
            edge.exposure,
        ),
        (
            "tollgate_edge_unsettled_units",
            "Units admitted on grants not yet settled with the core",
            &node,
            saturate(edge.unsettled_units),
        ),
        (
            "tollgate_edge_unsettled_usage_minor_units",
            "Money of the units admitted and not yet settled",
            &money,
            edge.unsettled_usage,
        ),
        (
            "tollgate_edge_unpaid_minor_units",
            "Admitted usage the core could not charge (settled late, past the balance)",
            &money,
            edge.unpaid,
        ),
    ];
    for (name, help, labels, value) in gauges {
        e.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_family(labels)?.encode_gauge(&value)?;
    }
    let seconds = edge.last_contact.map_or(0, |ms| saturate(ms / 1000));
    e.encode_descriptor(
        "tollgate_edge_core_last_contact_timestamp_seconds",
        "When the core last answered this edge, seconds since the epoch (0: never)",
        None,
        MetricType::Gauge,
    )?
    .encode_family(&node)?
    .encode_gauge(&seconds)
}

fn saturate(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
