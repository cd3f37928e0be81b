//! The command API over HTTP: an axum router on an [`Engine`], for orchestrators not written in
//! Rust. Commands are the scenario format's (with `at`), identified by the `Idempotency-Key`
//! header; reads are the document, accounts, resources, monthly bills and bill explanations.
//!
//! Every request but `/healthz` carries a bearer token from the tokens file ([`auth`]); errors
//! are `application/problem+json` ([`problem`]). Requests in flight together share the
//! engine's group commits: each handler awaits its own answer, the engine's single writer
//! takes whatever is queued at the moment as one chain with one flush.
//!
//! The router is built against the `Engine` only (and through it the `EventStore` trait), so
//! it serves any store the engine runs on.

pub mod auth;
pub mod problem;
mod stream;

use auth::{bearer, Access, Accounts, Grant, Tokens};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::DateTime;
use poolbill_domain::money::{fmt_cents, fmt_exact};
use poolbill_domain::time::to_beijing;
use poolbill_domain::{Command, Instant, State as DomainState, Subject};
use poolbill_engine::{Engine, Executed, Outcome, Upto};
use poolbill_projections::{resource_view, AccountView, DetailView, Projections};
use problem::{engine_problem, Code, Problem, ProblemBody};
use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Request bodies larger than this are refused (413) before they are read whole.
pub const BODY_LIMIT: usize = 64 * 1024;
/// The longest Idempotency-Key (a command id; the scenario format's longest id).
pub const MAX_KEY_LEN: usize = 256;
/// Bills per page unless `limit` says otherwise, and the most a page holds.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// What every handler shares.
#[derive(Clone)]
struct App {
    engine: Engine,
    tokens: Arc<Tokens>,
}

/// The API's routes on `engine`, guarded by `tokens`; `GET /openapi.json` describes them all.
pub fn router(engine: Engine, tokens: Tokens) -> Router {
    let (api_routes, api) = api();
    let api_json = Arc::new(api.to_pretty_json().expect("the OpenAPI document serialises"));
    let app = App { engine, tokens: Arc::new(tokens) };
    api_routes
        .route(
            "/openapi.json",
            axum::routing::get(move |_: Caller| {
                let body = api_json.clone();
                async move { json_response(StatusCode::OK, body.as_str().to_string()) }
            }),
        )
        .fallback(|| async { Problem::new(Code::NotFound, "no such endpoint (GET /openapi.json lists them)") })
        .method_not_allowed_fallback(|| async { Problem::new(Code::MethodNotAllowed, "this endpoint does not take that method") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// The OpenAPI document of the API's routes, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

#[derive(OpenApi)]
#[openapi(
    info(title = "poolbill", description = "The command API of poolbill, an event-sourced billing engine."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ProblemBody, CommandAnswer, AdvanceAnswer))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

fn api() -> (Router<App>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(post_command))
        .routes(routes!(post_advance))
        .routes(routes!(get_document))
        .routes(routes!(get_account))
        .routes(routes!(get_resource))
        .routes(routes!(get_bills))
        .routes(routes!(get_explain))
        .routes(routes!(healthz))
        .split_for_parts()
}

/// Serve `router` on `listener` until `shutdown` completes; then stop taking connections and
/// finish the requests in flight (a command being written is answered) before returning.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Completes on ctrl-c or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
}

/// A command's answer, the fields `poolbill serve` gives too: `id`, `status` (accepted or
/// rejected, then `rule` and `reason`), `first_position`, `last_position`, `duplicate`.
pub fn command_answer(id: &str, done: &Executed) -> Map<String, Value> {
    let mut answer = Map::new();
    answer.insert("id".into(), json!(id));
    answer.insert("duplicate".into(), json!(done.duplicate));
    answer.insert("first_position".into(), json!(done.first_position));
    answer.insert("last_position".into(), json!(done.last_position));
    match &done.outcome {
        Outcome::Accepted => {
            answer.insert("status".into(), json!("accepted"));
        }
        Outcome::Rejected { rule, reason } => {
            answer.insert("status".into(), json!("rejected"));
            answer.insert("rule".into(), json!(rule.to_string()));
            answer.insert("reason".into(), json!(reason));
        }
    }
    answer
}

/// The answer to `POST /v1/commands` (as `poolbill serve` answers a line, without `line`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the shape built by `command_answer`
struct CommandAnswer {
    id: String,
    /// `accepted` or `rejected`.
    status: String,
    /// The rule that refused it (rejected only).
    rule: Option<String>,
    reason: Option<String>,
    first_position: Option<u64>,
    last_position: Option<u64>,
    /// True when the key was seen before: this is the first answer, and nothing was appended.
    duplicate: bool,
}

/// The answer to `POST /v1/advance`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documents the shape built by `post_advance`
struct AdvanceAnswer {
    advanced_to: String,
    /// How many time-driven events that appended.
    events: u64,
}

/// The caller, from its bearer token: a missing or unknown token is refused (401) before the
/// handler runs, so it changes nothing.
struct Caller(Grant);

impl FromRequestParts<App> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Caller, Problem> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(Problem::new(Code::Unauthorized, "no Authorization header: send `Authorization: Bearer TOKEN`").at("Authorization"));
        };
        let Some(token) = value.to_str().ok().and_then(bearer) else {
            return Err(Problem::new(Code::Unauthorized, "the Authorization header is not `Bearer TOKEN`").at("Authorization"));
        };
        match app.tokens.find(token) {
            Some(grant) => Ok(Caller(grant.clone())),
            None => Err(Problem::new(Code::Unauthorized, "the bearer token is not known").at("Authorization")),
        }
    }
}

impl Caller {
    fn may_write(&self) -> Result<(), Problem> {
        match self.0.access {
            Access::ReadWrite => Ok(()),
            Access::Read => Err(Problem::new(Code::Forbidden, "this token is read-only")),
        }
    }

    fn sees(&self, account: &str) -> Result<(), Problem> {
        if self.0.accounts.allows(account) {
            Ok(())
        } else {
            Err(Problem::new(Code::Forbidden, format!("account {account:?} is not one of this token's accounts")))
        }
    }

    /// Platform-wide reads and writes (all accounts) need a token for every account.
    fn sees_all(&self, what: &str) -> Result<(), Problem> {
        match self.0.accounts {
            Accounts::All => Ok(()),
            Accounts::Only(_) => Err(Problem::new(Code::Forbidden, format!("{what} needs a token for all accounts (\"*\")"))),
        }
    }
}

/// The account owning a pool or job in `state` (read with it recalled if it is gone). Ids are
/// never reused (R17: a resource, once created, keeps its id for good), so an owner read
/// before submitting is still the owner when the command is decided.
fn owner(state: &DomainState, kind: &str, id: &str) -> Option<String> {
    match kind {
        "pool" => state.pools.get(id).map(|p| p.account.clone()),
        _ => state.jobs.get(id).map(|j| j.account.clone()),
    }
}

/// Whether the caller may send `command`: a read-write token, in scope for the account the
/// command is for (for a pool or job, the account owning it now). A scoped token naming a
/// pool or job that does not exist is refused as out of scope, so it learns nothing.
async fn check_scope(caller: &Caller, engine: &Engine, command: &Command) -> Result<(), Problem> {
    caller.may_write()?;
    let (kind, id) = match command.subject() {
        Subject::Platform => return caller.sees_all(command.type_name()),
        Subject::Account(account) => return caller.sees(account),
        Subject::Pool(id) => ("pool", id),
        Subject::Job(id) => ("job", id),
    };
    if caller.0.accounts == Accounts::All {
        return Ok(());
    }
    let (kind_owned, id_owned) = (kind.to_string(), id.to_string());
    let owner = engine.read_about(vec![id.to_string()], move |p| owner(&p.state, &kind_owned, &id_owned)).await.map_err(|e| engine_problem(&e))?;
    match owner {
        Some(account) if caller.0.accounts.allows(&account) => Ok(()),
        _ => Err(Problem::new(Code::Forbidden, format!("{kind} {id:?} is not one of this token's accounts'"))),
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn json_ok(value: &impl serde::Serialize) -> Response {
    json_response(StatusCode::OK, serde_json::to_string(value).expect("answers serialise"))
}

fn body_problem(rejection: BytesRejection) -> Problem {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(Code::BodyTooLarge, format!("the request body is larger than {BODY_LIMIT} bytes"))
    } else {
        Problem::new(Code::InvalidCommand, rejection.body_text())
    }
}

/// The body as a JSON object, with the message `poolbill serve` gives for a line that is not.
fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, Problem> {
    let bytes = body.map_err(body_problem)?;
    serde_json::from_slice(&bytes).map_err(|e| Problem::new(Code::InvalidCommand, format!("not valid JSON: {e}")))
}

/// The field a scenario error names, without the `body.` it is reported under.
fn field_of(path: &str) -> Option<String> {
    path.strip_prefix("body.").map(|f| f.to_string())
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Problem> {
    let Some(value) = headers.get("idempotency-key") else {
        return Err(Problem::new(Code::MissingIdempotencyKey, "no Idempotency-Key header: every command needs its id there").at("Idempotency-Key"));
    };
    match value.to_str().map(str::trim) {
        Ok(key) if !key.is_empty() && key.len() <= MAX_KEY_LEN => Ok(key.to_string()),
        _ => Err(Problem::new(Code::InvalidParameter, format!("Idempotency-Key: 1 to {MAX_KEY_LEN} visible ASCII characters are needed"))
            .at("Idempotency-Key")),
    }
}

/// Decide a scenario command (with `at`), identified by the Idempotency-Key header.
///
/// Answered once its events are on disk. A resent key with the same body gets the first
/// answer again and appends nothing; the same key with another body is 422.
#[utoipa::path(
    post,
    path = "/v1/commands",
    tag = "commands",
    params(("Idempotency-Key" = String, Header, description = "The command id: a retry repeats it with the same body")),
    request_body(content = Object, content_type = "application/json",
        description = "A scenario command: `{\"type\": \"top_up\", \"at\": \"2023-04-01T00:00:00+08:00\", \"account\": \"acct-1\", \"amount\": \"100.00\"}`"),
    responses(
        (status = 200, description = "Decided and durable: accepted, or rejected under a rule", body = CommandAnswer),
        (status = 400, description = "Not a valid command (nothing written)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Read-only token, or not the token's account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another command", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Not written; retry with the same key", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn post_command(State(app): State<App>, caller: Caller, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Response, Problem> {
    caller.may_write()?;
    let key = idempotency_key(&headers)?;
    let mut value = json_body(body)?;
    // A body that carries its id (a `poolbill serve` line) must carry the key's.
    if let Some(obj) = value.as_object_mut() {
        match obj.remove("id") {
            Some(Value::String(id)) if id == key => {}
            Some(other) => {
                return Err(Problem::new(Code::InvalidCommand, format!("body.id: {other} is not the Idempotency-Key {key:?}")).at("id"));
            }
            None => {}
        }
    }
    let (at, command) = poolbill_scenario::command(&value, "body").map_err(|e| {
        let problem = Problem::new(Code::InvalidCommand, e.to_string());
        match field_of(&e.path) {
            Some(field) => problem.at(field),
            None => problem,
        }
    })?;
    check_scope(&caller, &app.engine, &command).await?;
    tracing::debug!(entry = caller.0.entry, r#type = command.type_name(), "command");
    let done = app.engine.execute(key.clone(), at, command, None).await.map_err(|e| match e {
        // Keys are one namespace: the first command under a key may be another account's, and
        // the engine's message quotes it. Only a token for every account may read it.
        poolbill_engine::EngineError::IdReused { id, .. } if caller.0.accounts != Accounts::All => Problem::new(
            Code::IdempotencyKeyReused,
            format!("command id {id:?} was already used for another command; nothing was done (a new command needs a new id)"),
        )
        .at("Idempotency-Key"),
        e => engine_problem(&e),
    })?;
    Ok(json_ok(&command_answer(&key, &done)))
}

/// Let the clock pass an instant: every time-driven event due by then (platform-wide: needs
/// a read-write token for all accounts).
#[utoipa::path(
    post,
    path = "/v1/advance",
    tag = "commands",
    request_body(content = Object, content_type = "application/json", description = "`{\"at\": \"2023-05-01T00:00:00+08:00\"}`"),
    responses(
        (status = 200, description = "The events are durable", body = AdvanceAnswer),
        (status = 400, description = "No valid `at`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not a read-write token for all accounts", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn post_advance(State(app): State<App>, caller: Caller, body: Result<Bytes, BytesRejection>) -> Result<Response, Problem> {
    caller.may_write()?;
    caller.sees_all("advancing the clock")?;
    let value = json_body(body)?;
    let obj = value.as_object().ok_or_else(|| Problem::new(Code::InvalidCommand, "body: not a JSON object"))?;
    if let Some(other) = obj.keys().find(|k| *k != "at") {
        return Err(Problem::new(Code::InvalidCommand, format!("body.{other}: unknown field (advance takes only at)")).at(other.as_str()));
    }
    let at = match obj.get("at").and_then(Value::as_str).map(instant) {
        Some(Ok(at)) => at,
        _ => return Err(Problem::new(Code::InvalidCommand, "body.at: an RFC 3339 instant is needed").at("at")),
    };
    let events = app.engine.advance_to(at).await.map_err(|e| engine_problem(&e))?;
    Ok(json_ok(&json!({"advanced_to": at.to_rfc3339(), "events": events})))
}

/// An RFC 3339 instant with an offset, as Beijing time (R1): what the CLI's `--at` reads.
fn instant(text: &str) -> Result<Instant, String> {
    DateTime::parse_from_rfc3339(text).map(to_beijing).map_err(|e| format!("not an RFC 3339 instant with an offset ({e})"))
}

/// Query parameters, each known by name; an unknown one is an error naming it.
fn query(query: Result<Query<HashMap<String, String>>, QueryRejection>, known: &[&str]) -> Result<HashMap<String, String>, Problem> {
    let Query(params) = query.map_err(|e| Problem::new(Code::InvalidParameter, e.body_text()))?;
    if let Some(other) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(
            Problem::new(Code::InvalidParameter, format!("{other}: unknown parameter (this endpoint reads {})", known.join(", "))).at(other.as_str())
        );
    }
    Ok(params)
}

fn at_param(params: &HashMap<String, String>) -> Result<Option<Instant>, Problem> {
    params.get("at").map(|t| query_instant(t).map_err(|e| Problem::new(Code::InvalidParameter, format!("at: {e}")).at("at"))).transpose()
}

/// An instant from a query string, where an offset's unescaped `+` arrives as a space
/// (`?at=2023-04-12T00:00:00+08:00` typed as is): that space is read as the `+` it was.
fn query_instant(text: &str) -> Result<Instant, String> {
    instant(text).or_else(|e| match text.rsplit_once(' ') {
        Some((time, offset)) => instant(&format!("{time}+{offset}")).map_err(|_| e),
        None => Err(e),
    })
}

/// The contract's document (`poolbill run --format json`), streamed as it is written; as of
/// `at` when given. It covers every account: it needs a token for all accounts.
#[utoipa::path(
    get,
    path = "/v1/document",
    tag = "reads",
    params(("at" = Option<String>, Query, description = "Answer as of this instant (RFC 3339)")),
    responses(
        (status = 200, description = "The document", content_type = "application/json", body = Object),
        (status = 400, description = "A bad `at`", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not a token for all accounts", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn get_document(
    State(app): State<App>,
    caller: Caller,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, Problem> {
    caller.sees_all("the document")?;
    let params = query(params, &["at"])?;
    let upto = at_param(&params)?.map_or(Upto::All, Upto::Instant);
    let (mut writer, chunks) = stream::channel();
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || {
        // Nothing is written unless the whole fold succeeded.
        match poolbill_replay::document::write_document(engine.store().read_all(1), upto, &mut writer, |_| {}) {
            Ok(_) => {
                if let Err(e) = std::io::Write::flush(&mut writer) {
                    writer.fail(e);
                }
            }
            Err(e) => writer.fail(std::io::Error::other(problem::one_line(&e))),
        }
    });
    match chunks.first().await {
        (Some(Ok(first)), rest) => {
            let mut response = rest.into_body(first).into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok(response)
        }
        (Some(Err(e)), _) => Err(Problem::new(Code::StoreFailed, format!("reading the document: {e}"))),
        (None, _) => Err(Problem::new(Code::StoreFailed, "reading the document: the writer stopped")),
    }
}

/// One account as the document shows it: id, balance, whether in arrears (live state).
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The account id")),
    responses(
        (status = 200, description = "The account", content_type = "application/json", body = Object),
        (status = 403, description = "Not the token's account", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn get_account(State(app): State<App>, caller: Caller, Path(id): Path<String>) -> Result<Response, Problem> {
    caller.sees(&id)?;
    let key = id.clone();
    let view = app
        .engine
        .read(move |p| {
            p.state.accounts.get(&key).map(|a| AccountView { id: a.id.clone(), balance: fmt_cents(a.balance), in_arrears: a.arrears.is_some() })
        })
        .await
        .map_err(|e| engine_problem(&e))?;
    match view {
        Some(view) => Ok(json_ok(&view)),
        None => Err(Problem::new(Code::NotFound, format!("no account {id:?}"))),
    }
}

/// One pool, job or package as the document shows it; as of `at` when given.
#[utoipa::path(
    get,
    path = "/v1/resources/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The pool, job or package id"),
           ("at" = Option<String>, Query, description = "Answer as of this instant (RFC 3339)")),
    responses(
        (status = 200, description = "The resource", content_type = "application/json", body = Object),
        (status = 403, description = "Not one of the token's accounts' resources", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such resource", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn get_resource(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, Problem> {
    let params = query(params, &["at"])?;
    let at = at_param(&params)?;
    let key = id.clone();
    let find = move |state: &DomainState| resource_view(state, &key);
    let view = match at {
        // A gone resource is shown too: recalled if the engine forgot it.
        None => app.engine.read_about(vec![id.clone()], move |p| find(&p.state)).await.map_err(|e| engine_problem(&e))?,
        Some(at) => {
            // State as of `at`, folded without the history (bills, refusals): memory follows
            // what was live then, not the length of the log.
            let engine = app.engine.clone();
            let folded = tokio::task::spawn_blocking(move || {
                let envelopes = engine.store().read_all(1);
                poolbill_ledger::fold_from(Projections::live(), envelopes, Upto::Instant(at), |_, _: &poolbill_store::Envelope, _| {})
                    .map(|p| find(&p.state))
            })
            .await
            .map_err(|e| Problem::new(Code::StoreFailed, format!("reading the log: {e}")))?;
            folded.map_err(|e| Problem::new(Code::StoreFailed, problem::one_line(&e)))?
        }
    };
    match view {
        Some(view) => {
            caller
                .sees(&view.account)
                .map_err(|_| Problem::new(Code::Forbidden, format!("{id:?} is not one of this token's accounts' resources")))?;
            Ok(json_ok(&view))
        }
        None => Err(Problem::new(Code::NotFound, format!("no resource {id:?}"))),
    }
}

/// The detail bills of a month (R5): one row per account, resource and billing mode, in pages.
#[utoipa::path(
    get,
    path = "/v1/bills",
    tag = "reads",
    params(
        ("month" = String, Query, description = "The Beijing month, YYYY-MM"),
        ("account" = Option<String>, Query, description = "Only this account's rows (default: every account the token sees)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
        ("limit" = Option<usize>, Query, description = "Rows per page, 1 to 1000 (default 100)"),
        ("cursor" = Option<String>, Query, description = "Where the page starts: the `next_cursor` of the page before"),
    ),
    responses(
        (status = 200, description = "A page of rows, the totals of all rows, and the next cursor (also in the Next-Cursor header)",
         content_type = "application/json", body = Object),
        (status = 400, description = "A bad parameter", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not the token's account", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn get_bills(
    State(app): State<App>,
    caller: Caller,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, Problem> {
    let params = query(params, &["month", "account", "format", "limit", "cursor"])?;
    let page = Page::of(&params)?;
    let csv = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(Problem::new(Code::InvalidParameter, format!("format: {other:?} is not json or csv")).at("format")),
    };
    let Some(month) = params.get("month").cloned() else {
        return Err(Problem::new(Code::InvalidParameter, "month: the month is needed (YYYY-MM)").at("month"));
    };
    let account = params.get("account").cloned();
    if let Some(account) = &account {
        caller.sees(account)?;
    }
    let engine = app.engine.clone();
    let read = tokio::task::spawn_blocking(move || poolbill_replay::bills::month_in(engine.store(), &month))
        .await
        .map_err(|e| Problem::new(Code::StoreFailed, format!("reading the bills: {e}")))?;
    let mut bills = read.map_err(|e| match e {
        poolbill_replay::bills::MonthInError::Month(e) => Problem::new(Code::InvalidParameter, e.to_string()).at("month"),
        e => Problem::new(Code::StoreFailed, format!("reading the bills: {}", problem::one_line(&e))),
    })?;
    let rows: Vec<DetailView> = std::mem::take(&mut bills.rows)
        .into_iter()
        .filter(|r| account.as_ref().map_or(caller.0.accounts.allows(&r.account), |a| *a == r.account))
        .collect();
    let totals = Totals::of(&rows)?;
    let count = rows.len();
    let next = (page.start + page.limit < count).then(|| (page.start + page.limit).to_string());
    let page_rows: Vec<DetailView> = rows.into_iter().skip(page.start).take(page.limit).collect();
    let mut response = if csv {
        // The CSV of the page's rows; its total row is the total of every page.
        let view = poolbill_replay::bills::MonthBills {
            rows: page_rows,
            total_list: totals.list_price.clone(),
            total_discount: totals.discount.clone(),
            total_round_off: totals.round_off.clone(),
            total_payable: totals.payable.clone(),
            flow_payable: totals.payable.clone(),
            month: bills.month,
        };
        let mut response = (StatusCode::OK, view.to_csv()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        response
    } else {
        json_ok(&json!({
            "month": bills.month, "account": account, "rows": page_rows, "count": count,
            "totals": totals, "next_cursor": next,
        }))
    };
    if let Some(next) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert("next-cursor", next);
    }
    Ok(response)
}

/// Which rows a page holds.
struct Page {
    start: usize,
    limit: usize,
}

impl Page {
    fn of(params: &HashMap<String, String>) -> Result<Page, Problem> {
        let limit =
            match params.get("limit") {
                None => DEFAULT_PAGE,
                Some(text) => text.parse().ok().filter(|n| (1..=MAX_PAGE).contains(n)).ok_or_else(|| {
                    Problem::new(Code::InvalidParameter, format!("limit: {text:?} is not a number from 1 to {MAX_PAGE}")).at("limit")
                })?,
            };
        let start = match params.get("cursor") {
            None => 0,
            Some(text) => text
                .parse()
                .map_err(|_| Problem::new(Code::InvalidParameter, format!("cursor: {text:?} is not a cursor this API gave")).at("cursor"))?,
        };
        Ok(Page { start, limit })
    }
}

/// The sums of a set of detail rows (R5: each row already sums truncated lines, so the sums
/// are exact).
#[derive(serde::Serialize)]
struct Totals {
    list_price: String,
    discount: String,
    round_off: String,
    payable: String,
}

impl Totals {
    fn of(rows: &[DetailView]) -> Result<Totals, Problem> {
        let sum = |column: fn(&DetailView) -> &str| -> Result<Decimal, Problem> {
            rows.iter().try_fold(Decimal::ZERO, |total, row| {
                let text = column(row);
                text.parse::<Decimal>()
                    .map(|amount| total + amount)
                    .map_err(|_| Problem::new(Code::StoreFailed, format!("row {} {}: {text:?} is not an amount", row.account, row.resource)))
            })
        };
        Ok(Totals {
            list_price: fmt_exact(sum(|r| &r.list_price)?),
            discount: fmt_exact(sum(|r| &r.discount)?),
            round_off: fmt_exact(sum(|r| &r.round_off)?),
            payable: fmt_cents(sum(|r| &r.payable)?),
        })
    }
}

/// A flow bill derived step by step, each step with its rule (`poolbill explain --bill N`).
#[utoipa::path(
    get,
    path = "/v1/bills/{n}/explain",
    tag = "reads",
    params(("n" = usize, Path, description = "The bill's number in the document's bills (1, 2, …)")),
    responses(
        (status = 200, description = "The explanation", content_type = "application/json", body = Object),
        (status = 403, description = "Not the token's account's bill", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such bill", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn get_explain(State(app): State<App>, caller: Caller, Path(n): Path<String>) -> Result<Response, Problem> {
    let number: usize = n
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Problem::new(Code::InvalidParameter, format!("n: {n:?} is not a bill number (1, 2, …)")).at("n"))?;
    let engine = app.engine.clone();
    let explained = tokio::task::spawn_blocking(move || poolbill_replay::explain::explain_bill_in(engine.store(), number))
        .await
        .map_err(|e| Problem::new(Code::StoreFailed, format!("explaining: {e}")))?;
    let explanation = explained.map_err(|e| match e {
        poolbill_replay::explain::ExplainError::NoSuchBill(_) => Problem::new(Code::NotFound, e.to_string()),
        e => Problem::new(Code::StoreFailed, problem::one_line(&e)),
    })?;
    // Numbers are shared by every account: another account's bill is refused, not shown.
    caller
        .sees(&explanation.bill.account)
        .map_err(|_| Problem::new(Code::Forbidden, format!("bill {number} is not one of this token's accounts'")))?;
    Ok(json_ok(&explanation))
}

/// Whether the engine is up: its last log position. No token needed.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "Up", content_type = "application/json", body = Object),
        (status = 503, description = "The engine has stopped", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
async fn healthz(State(app): State<App>) -> Result<Response, Problem> {
    let position = app.engine.read(|p| p.last_position).await.map_err(|e| engine_problem(&e))?;
    Ok(json_ok(&json!({"status": "ok", "last_position": position})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offsets_plus_read_as_a_space_from_a_query_is_put_back() {
        let expected = instant("2023-04-12T00:00:00+08:00").unwrap();
        assert_eq!(query_instant("2023-04-12T00:00:00 08:00"), Ok(expected));
        assert_eq!(query_instant("2023-04-12T00:00:00+08:00"), Ok(expected));
        assert!(query_instant("2023-04-12 soon").unwrap_err().starts_with("not an RFC 3339 instant"));
    }

    #[test]
    fn every_command_has_a_scope_target() {
        let top_up = Command::TopUp { account: "a".into(), amount: Decimal::ONE };
        assert_eq!(top_up.subject(), Subject::Account("a"));
        assert_eq!(Command::Delete { pool: "p".into() }.subject(), Subject::Pool("p"));
        assert_eq!(Command::StopJob { job: "j".into() }.subject(), Subject::Job("j"));
    }
}
