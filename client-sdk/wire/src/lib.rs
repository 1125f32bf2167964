//! The wire formats of imqtt, shared by the server (broker and im-bridge) and the
//! client: plain serde types with no networking, so one definition serves every
//! side. Needs only `serde` and `serde_json`.
//!
//! Inside: ids and conversation ids ([`is_valid_id`], [`ConvId`]), the message
//! [`Envelope`], the [`Event`]s on `users/{uid}/events`, [`Presence`], the HTTP
//! request and response bodies (sending, sync and acks, groups, contacts,
//! accounts) with the error body [`ErrorBody`], and the MQTT [`topic`]s: their
//! builders and the outbox rule ([`topic::outbox_owner`]), which the broker applies.

mod accounts;
mod admin;
mod conv;
mod envelope;
mod error;
mod event;
mod groups;
mod id;
mod messages;
mod presence;
mod sync;
pub mod topic;

pub use accounts::{Account, Credentials, TokenResponse};
pub use admin::{AdminStats, AdminUser, Disconnected, MqttEndpoints, ServerInfo};
pub use conv::{ConvId, ConvIdError, ConvKind};
pub use envelope::{Envelope, Kind, LiveMessage, Qos};
pub use error::{ErrorBody, ErrorDetail};
pub use event::Event;
pub use groups::{
    AddMembersRequest, AddMembersResponse, CreateGroupRequest, Group, GroupInfo, GroupList,
    GroupMember, GroupRole, GroupSummary, HistoryVisible, SetRoleRequest,
};
pub use id::{InvalidId, MAX_ID_LEN, check_id, is_valid_id};
pub use messages::{
    BatchRequest, BatchResponse, BatchResult, EditRequest, LiveSendResult, NotifyRequest,
    Recipient, SendRequest, SendResult,
};
pub use presence::{ContactList, Presence, PresenceList, PresenceQuery, PresenceStatus};
pub use sync::{
    AckRequest, ConversationList, ConversationSummary, MemberRead, MessagesPage, MessagesQuery,
    ReadsPage, ReadsQuery, SyncConversation, SyncQuery, SyncResponse,
};
pub use topic::Topic;
