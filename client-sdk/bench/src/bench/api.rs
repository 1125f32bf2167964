//! The HTTP API of DESIGN.md section 5 as bench users call it: one [`Api`] per
//! simulated user, holding its bearer token and its own keep-alive HTTP/1.1
//! connection, so N senders are N connections. [`Api::as_user`] lets one
//! connection act for many users in turn (setting up thousands of them).

use std::collections::BTreeMap;
use std::time::Duration;

use imqtt_client::wire::{
    AckRequest, AddMembersRequest, AddMembersResponse, BatchRequest, BatchResponse, ConvId,
    CreateGroupRequest, Group, SendRequest, SendResult, SyncResponse,
};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::de::DeserializeOwned;

use super::{BenchError, JwtSecret};

/// Bytes of an unexpected answer's body kept for the error message.
const ERROR_BODY_BYTES: usize = 200;

/// One user's HTTP client. Requests on one `Api` reuse one connection as long as
/// they are made one after another.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    auth: HeaderValue,
}

/// How a stored send was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// `201`: stored now.
    Stored,
    /// `200`: a retry of a `client_msg_id` stored before; nothing new.
    Retry,
}

impl Api {
    /// A client for `user` against the server at `base` (`http://127.0.0.1:8080`),
    /// each request limited to `timeout`.
    pub(crate) fn new(
        base: &str,
        secret: &JwtSecret,
        user: &str,
        timeout: Duration,
    ) -> Result<Self, BenchError> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1)
            .timeout(timeout)
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            auth: bearer(secret, user)?,
        })
    }

    /// A client for `user` on this client's connection: requests made one after
    /// another through `self` and the clients it made share one connection.
    pub(crate) fn as_user(&self, secret: &JwtSecret, user: &str) -> Result<Self, BenchError> {
        Ok(Self {
            client: self.client.clone(),
            base: self.base.clone(),
            auth: bearer(secret, user)?,
        })
    }

    /// `POST /v1/messages`: answered once the message is durable.
    pub(crate) async fn send(&self, req: &SendRequest) -> Result<Sent, BenchError> {
        let response = self
            .client
            .post(format!("{}/v1/messages", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .json(req)
            .send()
            .await?;
        let retry = response.status() == StatusCode::OK;
        // Decoded to check the answer's shape; the bench needs none of its fields.
        let _: SendResult = decode(response, StatusCode::CREATED).await?;
        Ok(if retry { Sent::Retry } else { Sent::Stored })
    }

    /// `POST /v1/messages/batch`: one result (or error) per send, in order.
    pub(crate) async fn batch(&self, req: &BatchRequest) -> Result<BatchResponse, BenchError> {
        let response = self
            .client
            .post(format!("{}/v1/messages/batch", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .json(req)
            .send()
            .await?;
        decode(response, StatusCode::OK).await
    }

    /// `GET /v1/sync?limit=N`: the conversations with messages after the cursor.
    pub(crate) async fn sync(&self, limit: u32) -> Result<SyncResponse, BenchError> {
        let response = self
            .client
            .get(format!("{}/v1/sync?limit={limit}", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await?;
        decode(response, StatusCode::OK).await
    }

    /// `POST /v1/ack`: moves the caller's cursors.
    pub(crate) async fn ack(&self, cursors: BTreeMap<ConvId, u64>) -> Result<(), BenchError> {
        let response = self
            .client
            .post(format!("{}/v1/ack", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .json(&AckRequest { cursors })
            .send()
            .await?;
        no_content(response).await
    }

    /// `POST /v1/groups`: creates group `id`, owned by the caller.
    pub(crate) async fn create_group(&self, id: &str, name: &str) -> Result<Group, BenchError> {
        let req = CreateGroupRequest {
            id: Some(id.to_owned()),
            name: name.to_owned(),
            open: None,
            history_visible: None,
        };
        let response = self
            .client
            .post(format!("{}/v1/groups", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .json(&req)
            .send()
            .await?;
        decode(response, StatusCode::CREATED).await
    }

    /// `POST /v1/groups/{gid}/members`: adds up to 1,000 users; the answer lists
    /// those that were not members yet.
    pub(crate) async fn add_members(
        &self,
        gid: &str,
        users: Vec<String>,
    ) -> Result<AddMembersResponse, BenchError> {
        let response = self
            .client
            .post(format!("{}/v1/groups/{gid}/members", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .json(&AddMembersRequest { users })
            .send()
            .await?;
        decode(response, StatusCode::OK).await
    }

    /// `DELETE /v1/groups/{gid}/members/{uid}`: answered once `uid`'s sessions no
    /// longer receive the group.
    pub(crate) async fn remove_member(&self, gid: &str, uid: &str) -> Result<(), BenchError> {
        let response = self
            .client
            .delete(format!("{}/v1/groups/{gid}/members/{uid}", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await?;
        no_content(response).await
    }

    /// `PUT /v1/contacts/{uid}`: `uid` may watch the caller's presence.
    pub(crate) async fn add_contact(&self, uid: &str) -> Result<(), BenchError> {
        let response = self
            .client
            .put(format!("{}/v1/contacts/{uid}", self.base))
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await?;
        no_content(response).await
    }
}

/// The `Authorization` header of `user`.
fn bearer(secret: &JwtSecret, user: &str) -> Result<HeaderValue, BenchError> {
    let token = secret.token(user, None)?;
    HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| BenchError::Unexpected(format!("token is not a header value: {e}")))
}

/// `Ok` for a `204`, the error for anything else.
async fn no_content(response: reqwest::Response) -> Result<(), BenchError> {
    if response.status() == StatusCode::NO_CONTENT {
        Ok(())
    } else {
        Err(unexpected(response).await)
    }
}

/// The JSON body of a successful answer: `expected`, or `200` (a send's retry).
async fn decode<T: DeserializeOwned>(
    response: reqwest::Response,
    expected: StatusCode,
) -> Result<T, BenchError> {
    let status = response.status();
    if status == expected || status == StatusCode::OK {
        Ok(response.json().await?)
    } else {
        Err(unexpected(response).await)
    }
}

async fn unexpected(response: reqwest::Response) -> BenchError {
    let status = response.status().as_u16();
    let mut body = response.text().await.unwrap_or_default();
    if body.len() > ERROR_BODY_BYTES {
        let mut end = ERROR_BODY_BYTES;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
    }
    BenchError::Status { status, body }
}
