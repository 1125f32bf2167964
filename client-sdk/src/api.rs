//! [`Api`]: the HTTP API of DESIGN.md §5 as typed calls, with the caller's token
//! (signing in, and again when the server refuses it), the server's JSON error body
//! turned into [`Error::Api`], idempotent retries for sends, and failover across
//! the roots of one service (`servers::HttpServers`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::servers::HttpServers;
use crate::wire::{
    self, AckRequest, AddMembersRequest, AddMembersResponse, BatchRequest, BatchResponse,
    ContactList, ConvId, ConversationList, CreateGroupRequest, EditRequest, ErrorBody, Group,
    GroupInfo, GroupList, GroupRole, LiveSendResult, MessagesPage, MessagesQuery, NotifyRequest,
    PresenceList, PresenceQuery, ReadsPage, ReadsQuery, SendRequest, SendResult, SetRoleRequest,
    SyncQuery, SyncResponse, TokenResponse,
};
use crate::{Credentials, Error, RetryPolicy, TokenRefresh, new_client_msg_id};

/// How long one HTTP request may take before it counts as a transport failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may take to open: a server that does not answer by
/// then is away, and (the request not sent) any request moves to the next one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a send became: stored with its seq, or (qos 0) delivered live only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Stored durably (`201`, or `200` for a retry the server had already stored).
    Stored(SendResult),
    /// A qos 0 send: not stored, no seq (`202`).
    Live(LiveSendResult),
}

impl Sent {
    /// The stored result, unless this was a qos 0 send.
    pub fn stored(&self) -> Option<&SendResult> {
        match self {
            Sent::Stored(r) => Some(r),
            Sent::Live(_) => None,
        }
    }

    /// The message's server id.
    pub fn id(&self) -> &str {
        match self {
            Sent::Stored(r) => &r.id,
            Sent::Live(r) => &r.id,
        }
    }
}

/// The HTTP API of one server (at one root or several, see
/// [`Api::with_servers`]), as one user. Cheap to clone (one connection pool, and
/// one root in use for all clones).
#[derive(Clone, Debug)]
pub struct Api {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    servers: HttpServers,
    user: String,
    credentials: Credentials,
    refresh: Option<TokenRefresh>,
    /// The token in use; `None` until a password sign-in.
    token: RwLock<Option<String>>,
    /// One refresh at a time: a burst of 401s makes one new token, not many.
    refreshing: tokio::sync::Mutex<()>,
    retry: RetryPolicy,
}

/// Whether a request may be made again when it is unknown whether the server
/// carried it out (a timeout, a connection broken mid-answer, a proxy's 502-504).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// Made twice, it does what it does once: reads, acks, adding a contact,
    /// sends with their `client_msg_id`, sign-ins.
    Safe,
    /// A second one may fail where the first succeeded (a create, an add, a
    /// delete): made again only when the first certainly never reached a server.
    Unsafe,
}

impl Api {
    /// The API at `http_url` as `user`: one root, `http://host:port`, or
    /// several separated by commas (see [`Api::with_servers`]).
    pub fn new(
        http_url: &str,
        user: &str,
        credentials: Credentials,
        refresh: Option<TokenRefresh>,
        retry: RetryPolicy,
    ) -> Result<Api, Error> {
        Api::with_servers([http_url], user, credentials, refresh, retry)
    }

    /// The API at several roots of one service (the nodes of a cluster; each
    /// `http://host:port`, and an item may hold several separated by commas)
    /// as `user`. Requests go to the first root. When one finds its server away
    /// (the connection refused, reset or timed out; 502, 503 or 504), that
    /// request and every later one go to the next root, round robin. The failed
    /// request is made again there at once (one try per root) when repeating
    /// it is harmless (reads, acks, sends with their `client_msg_id`, which
    /// [`Api::send`] gives every send), or when its connection was refused (it
    /// never reached a server); otherwise its error is the caller's. A 4xx is
    /// the server's answer, never a reason to move. The [`RetryPolicy`]'s
    /// pauses come after a whole round has failed.
    pub fn with_servers<I, S>(
        http_urls: I,
        user: &str,
        credentials: Credentials,
        refresh: Option<TokenRefresh>,
        retry: RetryPolicy,
    ) -> Result<Api, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let servers = HttpServers::parse(http_urls)?;
        wire::check_id(user).map_err(|e| Error::Config(format!("user: {e}")))?;
        let token = match &credentials {
            Credentials::Token(t) => Some(t.clone()),
            Credentials::Password(_) => None,
        };
        let http = http_client()?;
        Ok(Api {
            inner: Arc::new(Inner {
                http,
                servers,
                user: user.to_owned(),
                credentials,
                refresh,
                token: RwLock::new(token),
                refreshing: tokio::sync::Mutex::new(()),
                retry,
            }),
        })
    }

    /// The user this API acts as.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The root requests go to now: the first one given, until a server is
    /// found away.
    pub fn base_url(&self) -> &str {
        self.inner.servers.current().1
    }

    /// The current token, signing in first with a password credential.
    pub async fn token(&self) -> Result<String, Error> {
        if let Some(t) = self.current_token() {
            return Ok(t);
        }
        self.refresh_token(None).await
    }

    fn current_token(&self) -> Option<String> {
        self.inner
            .token
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether a refused token can be replaced (a password, or a callback).
    fn can_refresh(&self) -> bool {
        matches!(self.inner.credentials, Credentials::Password(_)) || self.inner.refresh.is_some()
    }

    /// A new token because `stale` was refused: a password sign-in, or the
    /// application's refresh callback. When another call already replaced
    /// `stale`, that token is returned and nothing is asked again.
    pub async fn refresh_token(&self, stale: Option<&str>) -> Result<String, Error> {
        let _one = self.inner.refreshing.lock().await;
        if let Some(current) = self.current_token()
            && Some(current.as_str()) != stale
        {
            return Ok(current);
        }
        let fresh = match (&self.inner.credentials, &self.inner.refresh) {
            (Credentials::Password(p), _) => {
                sign_in(&self.inner.http, &self.inner.servers, &self.inner.user, p)
                    .await?
                    .token
            }
            (Credentials::Token(_), Some(refresh)) => refresh.call().await?,
            (Credentials::Token(_), None) => {
                return Err(Error::Unauthorized(
                    "the token was refused and there is no way to refresh it".into(),
                ));
            }
        };
        *self.inner.token.write().unwrap_or_else(|p| p.into_inner()) = Some(fresh.clone());
        Ok(fresh)
    }

    /// One request with the bearer token, on to the next server while they are
    /// away; a 401 gets one new token and one more try. Answers the status and
    /// body of a 2xx.
    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        repeat: Repeat,
    ) -> Result<(StatusCode, bytes::Bytes), Error> {
        let mut token = self.token().await?;
        let mut refreshed = false;
        loop {
            let resp = exchange(&self.inner.servers, repeat, |base| {
                let mut req = self
                    .inner
                    .http
                    .request(method.clone(), format!("{base}{path}"))
                    .bearer_auth(&token);
                if !query.is_empty() {
                    req = req.query(query);
                }
                if let Some(b) = body {
                    req = req.json(b);
                }
                req
            })
            .await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed && self.can_refresh() {
                refreshed = true;
                token = self.refresh_token(Some(&token)).await?;
                continue;
            }
            return answer(resp).await.map(|body| (status, body));
        }
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, Error> {
        let (_, body) = self
            .call::<()>(Method::GET, path, query, None, Repeat::Safe)
            .await?;
        decode(&body)
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        repeat: Repeat,
    ) -> Result<T, Error> {
        let (_, body) = self
            .call(Method::POST, path, &[], Some(body), repeat)
            .await?;
        decode(&body)
    }

    async fn no_content<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        repeat: Repeat,
    ) -> Result<(), Error> {
        self.call(method, path, &[], body, repeat).await.map(drop)
    }

    /// `POST /v1/messages`, without retries. With a `client_msg_id` (which
    /// [`Api::send`] gives every send) a server found away gets it made again
    /// on the next one at once, since the server stores it once whatever the
    /// tries; without one, only when it never reached a server.
    pub async fn send_once(&self, req: &SendRequest) -> Result<Sent, Error> {
        let repeat = match req.client_msg_id {
            Some(_) => Repeat::Safe,
            None => Repeat::Unsafe,
        };
        let (status, body) = self
            .call(Method::POST, "/v1/messages", &[], Some(req), repeat)
            .await?;
        if status == StatusCode::ACCEPTED {
            decode(&body).map(Sent::Live)
        } else {
            decode(&body).map(Sent::Stored)
        }
    }

    /// `POST /v1/messages` with retries under the API's [`RetryPolicy`]: the
    /// request gets a `client_msg_id` when it has none, and every retry reuses
    /// it, so the message is stored once however many attempts it takes.
    pub async fn send(&self, mut req: SendRequest) -> Result<Sent, Error> {
        req.client_msg_id.get_or_insert_with(new_client_msg_id);
        self.inner.retry.run(|| self.send_once(&req)).await
    }

    /// A direct message to `to`, stored (qos 1), retried idempotently.
    pub async fn send_to(&self, to: &str, body: Value) -> Result<SendResult, Error> {
        stored(self.send(SendRequest::to_user(to, body)).await?)
    }

    /// A message to group `gid`, stored (qos 1), retried idempotently.
    pub async fn send_group(&self, gid: &str, body: Value) -> Result<SendResult, Error> {
        stored(self.send(SendRequest::to_group(gid, body)).await?)
    }

    /// `PATCH /v1/conversations/{conv}/messages/{seq}`: replaces the body of
    /// one's own message (within the server's edit window). The edit is a
    /// message of its own; the answer is its id, seq and ts. Retried with one
    /// `client_msg_id`, so it is stored once.
    pub async fn edit(&self, conv: &ConvId, seq: u64, body: Value) -> Result<SendResult, Error> {
        let req = EditRequest {
            body,
            client_msg_id: Some(new_client_msg_id()),
        };
        let path = format!("/v1/conversations/{conv}/messages/{seq}");
        self.inner
            .retry
            .run(|| async {
                let (_, body) = self
                    .call(Method::PATCH, &path, &[], Some(&req), Repeat::Safe)
                    .await?;
                decode(&body)
            })
            .await
    }

    /// `DELETE /v1/conversations/{conv}/messages/{seq}`: recalls one's own
    /// message (within the recall window), or as a group's owner or admin any
    /// of the group's. The recall is a message of its own. Made again only when
    /// it certainly never reached a server (a second one is 409 `recalled`).
    pub async fn recall(&self, conv: &ConvId, seq: u64) -> Result<SendResult, Error> {
        let path = format!("/v1/conversations/{conv}/messages/{seq}");
        let (_, body) = self
            .call::<()>(Method::DELETE, &path, &[], None, Repeat::Unsafe)
            .await?;
        decode(&body)
    }

    /// `POST /v1/messages/batch`, retried as a whole (every send in it gets a
    /// `client_msg_id`, so a retry stores nothing twice).
    pub async fn send_batch(&self, mut req: BatchRequest) -> Result<BatchResponse, Error> {
        for m in &mut req.messages {
            m.client_msg_id.get_or_insert_with(new_client_msg_id);
        }
        self.inner
            .retry
            .run(|| self.post("/v1/messages/batch", &req, Repeat::Safe))
            .await
    }

    /// `POST /v1/notify` (service and admin tokens): one notice in each
    /// `sys:{uid}`, retried idempotently.
    pub async fn notify(&self, to: &[&str], body: Value) -> Result<BatchResponse, Error> {
        let req = NotifyRequest {
            to: to.iter().map(|u| (*u).to_owned()).collect(),
            body,
            client_msg_id: Some(new_client_msg_id()),
        };
        self.inner
            .retry
            .run(|| self.post("/v1/notify", &req, Repeat::Safe))
            .await
    }

    /// `GET /v1/sync?limit=N`.
    pub async fn sync(&self, q: SyncQuery) -> Result<SyncResponse, Error> {
        let mut query = Vec::new();
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        self.get("/v1/sync", &query).await
    }

    /// `GET /v1/conversations`.
    pub async fn conversations(&self) -> Result<ConversationList, Error> {
        self.get("/v1/conversations", &[]).await
    }

    /// `GET /v1/conversations/{conv}/messages?after=S|before=S&limit=N`.
    pub async fn messages(&self, conv: &ConvId, q: MessagesQuery) -> Result<MessagesPage, Error> {
        let mut query = Vec::new();
        if let Some(a) = q.after {
            query.push(("after", a.to_string()));
        }
        if let Some(b) = q.before {
            query.push(("before", b.to_string()));
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        self.get(&format!("/v1/conversations/{conv}/messages"), &query)
            .await
    }

    /// `GET /v1/conversations/{conv}/reads?after=UID&limit=N`: how far each
    /// member has read, by user id.
    pub async fn reads(&self, conv: &ConvId, q: ReadsQuery) -> Result<ReadsPage, Error> {
        let mut query = Vec::new();
        if let Some(a) = q.after {
            query.push(("after", a));
        }
        if let Some(l) = q.limit {
            query.push(("limit", l.to_string()));
        }
        self.get(&format!("/v1/conversations/{conv}/reads"), &query)
            .await
    }

    /// `POST /v1/ack`: moves the caller's cursors forward (never back).
    pub async fn ack(&self, req: &AckRequest) -> Result<(), Error> {
        // Cursors only move forward: an ack made twice is an ack.
        self.no_content(Method::POST, "/v1/ack", Some(req), Repeat::Safe)
            .await
    }

    /// `POST /v1/groups`.
    pub async fn create_group(&self, req: &CreateGroupRequest) -> Result<Group, Error> {
        self.post("/v1/groups", req, Repeat::Unsafe).await
    }

    /// `GET /v1/groups`: the caller's groups.
    pub async fn groups(&self) -> Result<GroupList, Error> {
        self.get("/v1/groups", &[]).await
    }

    /// `GET /v1/groups/{gid}`.
    pub async fn group(&self, gid: &str) -> Result<GroupInfo, Error> {
        self.get(&format!("/v1/groups/{}", id(gid)?), &[]).await
    }

    /// `DELETE /v1/groups/{gid}`.
    pub async fn delete_group(&self, gid: &str) -> Result<(), Error> {
        let path = format!("/v1/groups/{}", id(gid)?);
        self.no_content::<()>(Method::DELETE, &path, None, Repeat::Unsafe)
            .await
    }

    /// `POST /v1/groups/{gid}/members`.
    pub async fn add_members(
        &self,
        gid: &str,
        users: &[&str],
    ) -> Result<AddMembersResponse, Error> {
        let req = AddMembersRequest {
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        };
        let path = format!("/v1/groups/{}/members", id(gid)?);
        self.post(&path, &req, Repeat::Unsafe).await
    }

    /// `DELETE /v1/groups/{gid}/members/{uid}`: remove `uid`, or leave when it is
    /// the caller.
    pub async fn remove_member(&self, gid: &str, uid: &str) -> Result<(), Error> {
        let path = format!("/v1/groups/{}/members/{}", id(gid)?, id(uid)?);
        self.no_content::<()>(Method::DELETE, &path, None, Repeat::Unsafe)
            .await
    }

    /// `PUT /v1/groups/{gid}/members/{uid}`: promote, demote or hand over.
    pub async fn set_role(&self, gid: &str, uid: &str, role: GroupRole) -> Result<(), Error> {
        let path = format!("/v1/groups/{}/members/{}", id(gid)?, id(uid)?);
        // A PUT, yet not harmless twice: handing a group over a second time
        // fails (the caller is no longer its owner).
        let body = SetRoleRequest { role };
        self.no_content(Method::PUT, &path, Some(&body), Repeat::Unsafe)
            .await
    }

    /// `PUT /v1/contacts/{uid}`: let `uid` see the caller's presence.
    pub async fn add_contact(&self, uid: &str) -> Result<(), Error> {
        let path = format!("/v1/contacts/{}", id(uid)?);
        self.no_content::<()>(Method::PUT, &path, None, Repeat::Safe)
            .await
    }

    /// `DELETE /v1/contacts/{uid}`.
    pub async fn remove_contact(&self, uid: &str) -> Result<(), Error> {
        let path = format!("/v1/contacts/{}", id(uid)?);
        self.no_content::<()>(Method::DELETE, &path, None, Repeat::Unsafe)
            .await
    }

    /// `GET /v1/contacts`.
    pub async fn contacts(&self) -> Result<ContactList, Error> {
        self.get("/v1/contacts", &[]).await
    }

    /// `GET /v1/presence?users=..`: those of `users` the caller may see.
    pub async fn presence(&self, users: &[&str]) -> Result<PresenceList, Error> {
        let q = PresenceQuery::new(users.iter().copied());
        self.get("/v1/presence", &[("users", q.users)]).await
    }
}

/// `POST /v1/accounts`: creates a built-in account (no token needed). `http_url`
/// may list several roots, separated by commas (see [`Api::with_servers`]; a
/// sign-up is made again on the next one only when it never reached a server).
pub async fn sign_up(http_url: &str, user: &str, password: &str) -> Result<(), Error> {
    let servers = HttpServers::parse([http_url])?;
    let (http, path) = (http_client()?, "/v1/accounts");
    post_credentials(&http, &servers, path, user, password, Repeat::Unsafe)
        .await
        .map(drop)
}

/// `POST /v1/tokens`: a token for a built-in account. `http_url` may list
/// several roots, separated by commas (see [`Api::with_servers`]).
pub async fn sign_in_at(
    http_url: &str,
    user: &str,
    password: &str,
) -> Result<TokenResponse, Error> {
    let servers = HttpServers::parse([http_url])?;
    sign_in(&http_client()?, &servers, user, password).await
}

async fn sign_in(
    http: &reqwest::Client,
    servers: &HttpServers,
    user: &str,
    password: &str,
) -> Result<TokenResponse, Error> {
    // A second sign-in only makes a second token.
    let path = "/v1/tokens";
    match post_credentials(http, servers, path, user, password, Repeat::Safe).await {
        Ok(body) => decode(&body),
        Err(e) if e.status() == Some(401) => Err(Error::Unauthorized(e.to_string())),
        Err(e) => Err(e),
    }
}

/// `{user, password}` posted to `path` of the accounts API (no token).
async fn post_credentials(
    http: &reqwest::Client,
    servers: &HttpServers,
    path: &str,
    user: &str,
    password: &str,
    repeat: Repeat,
) -> Result<bytes::Bytes, Error> {
    let creds = wire::Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    };
    let resp = exchange(servers, repeat, |base| {
        http.post(format!("{base}{path}")).json(&creds)
    })
    .await?;
    answer(resp).await
}

/// Sends the request `build` makes for a root to the server in use, and while
/// servers are away (see [`away`]) on to the next ones, one try each, as far as
/// `repeat` allows. Answers the first response of a server that is there, else
/// the last failure (a 502-504 as its response, for [`answer`] to read).
async fn exchange(
    servers: &HttpServers,
    repeat: Repeat,
    build: impl Fn(&str) -> reqwest::RequestBuilder,
) -> Result<reqwest::Response, Error> {
    // Never empty (HttpServers::parse), so the last try returns.
    let mut tries_left = servers.len();
    loop {
        tries_left = tries_left.saturating_sub(1);
        let (index, base) = servers.current();
        let why = match build(base).send().await {
            Ok(resp) if !away(resp.status()) => return Ok(resp),
            Ok(resp) => {
                servers.failed(index);
                if tries_left == 0 || repeat == Repeat::Unsafe {
                    return Ok(resp);
                }
                resp.status().to_string()
            }
            Err(e) => {
                servers.failed(index);
                // A refused connection carried nothing: any request may go on.
                if tries_left == 0 || (repeat == Repeat::Unsafe && !e.is_connect()) {
                    return Err(e.into());
                }
                Error::from(e).to_string()
            }
        };
        tracing::debug!(server = base, error = %why, "server away, trying the next");
    }
}

/// Whether an answer says the server is away (a proxy found nothing behind
/// it, or the server cannot serve now), rather than anything about the request.
fn away(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The HTTP client every call uses: one request may take [`REQUEST_TIMEOUT`],
/// its connection [`CONNECT_TIMEOUT`] of it.
fn http_client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| Error::Config(format!("http client: {e}")))
}

fn stored(sent: Sent) -> Result<SendResult, Error> {
    match sent {
        Sent::Stored(r) => Ok(r),
        Sent::Live(_) => Err(Error::Decode("a qos 1 send was answered as qos 0".into())),
    }
}

/// An id for a URL path: checked, so it can never add a path segment.
fn id(s: &str) -> Result<&str, Error> {
    wire::check_id(s).map_err(|e| Error::Config(e.to_string()))
}

/// The body of a 2xx, or the error the answer stands for.
async fn answer(resp: reqwest::Response) -> Result<bytes::Bytes, Error> {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp.bytes().await?;
    if status.is_success() {
        return Ok(body);
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (
            format!("http_{}", status.as_u16()),
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        ),
    };
    Err(Error::Api {
        status: status.as_u16(),
        code,
        message,
        retry_after,
    })
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode(e.to_string()))
}
