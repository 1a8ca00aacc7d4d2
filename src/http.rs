//! HTTP: `/metrics` (Prometheus text), `/livez`, `/readyz`, and the JSON API
//! `GET /api/v1/tenants`, `GET /api/v1/jobs[?tenant=NAME]` and `GET /api/v1/partitions`.
//!
//! The API never touches engine state directly: it sends a [`Query`] over a bounded channel to the
//! task that owns the pipeline and waits for the answer, so state needs no lock.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Query as UrlQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Explanation, JobReport, OrganisationReport, TenantReport};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::partitions::{PartitionStatus, Partitions};

/// A snapshot request to the state-owning task.
pub enum Query {
    Tenants(oneshot::Sender<TenantsView>),
    Jobs(Option<String>, oneshot::Sender<JobsView>),
    Partitions(oneshot::Sender<PartitionsView>),
    Organisations(oneshot::Sender<OrganisationsView>),
    Explain {
        tenant: String,
        job: String,
        tx: oneshot::Sender<Option<Explanation>>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionsView {
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantsView {
    pub max_event_time: Option<String>,
    pub tenants: Vec<TenantReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OrganisationsView {
    pub max_event_time: Option<String>,
    pub organisations: Vec<OrganisationReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobsView {
    pub max_event_time: Option<String>,
    pub jobs: Vec<JobReport>,
}

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub queries: mpsc::Sender<Query>,
}

#[derive(Deserialize)]
struct JobFilter {
    tenant: Option<String>,
}

#[derive(Deserialize)]
struct JobId {
    tenant: String,
    job: String,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/tenants", get(tenants))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/partitions", get(partitions))
        .route("/api/v1/organisations", get(organisations))
        .route("/api/v1/explain", get(explain))
        .with_state(state)
}

/// Binds `addr` and serves until `shutdown` resolves; returns the bound address at once.
pub async fn serve(
    addr: &str,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "http server failed");
        }
    });
    Ok((bound, task))
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    match s.health.check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "state task is not running\n",
    )
        .into_response()
}

async fn tenants(State(s): State<HttpState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.queries.send(Query::Tenants(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(v) => Json(v).into_response(),
        Err(_) => unavailable(),
    }
}

async fn jobs(State(s): State<HttpState>, UrlQuery(f): UrlQuery<JobFilter>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.queries.send(Query::Jobs(f.tenant, tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(v) => Json(v).into_response(),
        Err(_) => unavailable(),
    }
}

async fn partitions(State(s): State<HttpState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.queries.send(Query::Partitions(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(v) => Json(v).into_response(),
        Err(_) => unavailable(),
    }
}

async fn organisations(State(s): State<HttpState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.queries.send(Query::Organisations(tx)).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(v) => Json(v).into_response(),
        Err(_) => unavailable(),
    }
}

async fn explain(State(s): State<HttpState>, UrlQuery(id): UrlQuery<JobId>) -> Response {
    let (tx, rx) = oneshot::channel();
    let q = Query::Explain {
        tenant: id.tenant.clone(),
        job: id.job.clone(),
        tx,
    };
    if s.queries.send(q).await.is_err() {
        return unavailable();
    }
    match rx.await {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({
                "error": format!("no job {} of tenant {} in the current state", id.job, id.tenant)
            })),
        )
            .into_response(),
        Err(_) => unavailable(),
    }
}

/// Answers a query from the current state (called by the state-owning task).
pub fn answer(parts: &Partitions, q: Query) {
    let p = &parts.pipeline;
    let max_event_time = p.max_event_ms().map(crate::decode::format_rfc3339_ms);
    // A dropped receiver means the HTTP client went away; nothing to do.
    match q {
        Query::Tenants(tx) => {
            let _ = tx.send(TenantsView {
                max_event_time,
                tenants: p.tenant_reports(),
            });
        }
        Query::Jobs(tenant, tx) => {
            let mut jobs = p.job_reports();
            if let Some(t) = tenant {
                jobs.retain(|j| j.tenant == t);
            }
            let _ = tx.send(JobsView {
                max_event_time,
                jobs,
            });
        }
        Query::Partitions(tx) => {
            let _ = tx.send(PartitionsView {
                partitions: parts.status(),
            });
        }
        Query::Organisations(tx) => {
            let _ = tx.send(OrganisationsView {
                max_event_time,
                organisations: p.organisation_reports(),
            });
        }
        Query::Explain { tenant, job, tx } => {
            let _ = tx.send(p.explain(&tenant, &job));
        }
    }
}
