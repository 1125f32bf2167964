//! `listen`: one device of the user ([`Client`]): connects, then prints every
//! [`ClientEvent`] as it arrives, one flushed line each, until Ctrl-C (or
//! SIGTERM), or `--count` messages. Then it closes the client, which sends the
//! acks still waiting.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use imqtt_client::wire::{Envelope, Event, LiveMessage, Presence, PresenceStatus};
use imqtt_client::{
    Client, ClientConfig, ClientEvent, Credentials, Events, FileCursors, GroupEvent,
};
use serde::Serialize;

use crate::output::{self, Out, clean};
use crate::settings::Session;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints one line per event, as it arrives:
  -- connected as bob (device cli-1a2b3c4d)
  -- disconnected: REASON                 (it reconnects by itself)
  -- resync: catching up on pushes the server may have missed
                                          (what it finds follows, once and in order)
  dm:alice:bob #3 alice: hello            a stored message
  dm:alice:bob (live) alice: {...}        a qos 0 message: not stored, no seq
  presence alice online (phone)           of a user given to --watch
  group team: bob added by alice          also: removed by, joined, left, deleted by
  outbox c-1: sent dm:alice:bob #4        a send over the MQTT outbox, from any device

With --json, one JSON object per line, told apart by \"type\":
  {\"type\":\"connected\",\"user\",\"device\"}   {\"type\":\"disconnected\",\"reason\"}
  {\"type\":\"message\", and the envelope's fields: \"id\",\"conv\",\"seq\",\"from\",\"to\",\"ts\",
   \"client_msg_id\" (when the sender gave one),\"qos\",\"body\"}
  {\"type\":\"live\", and the same fields but \"seq\"}
  {\"type\":\"presence\",\"user\",\"status\",\"devices\",\"ts\"}
  the server's events as they are: {\"type\":\"member_added\"|\"member_removed\",\"group\",
   \"user\",\"by\"}, {\"type\":\"group_deleted\",\"group\",\"by\"}, {\"type\":\"sent\"|\"error\",...},
   {\"type\":\"resync\"} (the messages the server had missed follow)

The connected line comes first. Then the messages not yet acked (with --cursors:
not yet printed) and every new one, each conversation's exactly once and in seq
order; they are acked as they are printed, unless --no-ack.")]
pub(crate) struct Listen {
    /// This device's name: its MQTT client id and its name in presence; a second
    /// connection with the same name replaces the first [default: cli- and 8
    /// random hex digits]
    #[arg(long, value_name = "NAME", value_parser = super::id)]
    device: Option<String>,
    /// Keep the highest seq printed per conversation in FILE, so that the next
    /// listen with it resumes exactly there [default: resume from the server's
    /// cursors, i.e. from what was acked]
    #[arg(long, value_name = "FILE")]
    cursors: Option<PathBuf>,
    /// Watch these users' presence (comma-separated; you must be their contact
    /// or share a group with them)
    #[arg(long, value_name = "U1,U2", value_delimiter = ',', value_parser = super::id)]
    watch: Vec<String>,
    /// Exit after N stored messages
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Do not ack the messages printed (the server's cursors stay where they are)
    #[arg(long)]
    no_ack: bool,
}

pub(crate) async fn run(session: &Session, args: Listen, out: Out) -> anyhow::Result<()> {
    // Before connecting, so that a Ctrl-C from the first line on closes cleanly.
    let mut stop = Stop::new()?;
    let device = args.device.unwrap_or_else(default_device);
    let mut config = ClientConfig::new(
        &session.server.mqtt,
        &session.server.http,
        &session.user,
        &device,
        Credentials::Token(session.token.expose().to_owned()),
    );
    config.auto_ack = !args.no_ack;
    config.retry = crate::RETRY;
    if let Some(path) = &args.cursors {
        config.cursors = Arc::new(FileCursors::open(path)?);
    }
    let (client, mut events) = tokio::select! {
        connected = Client::connect(config) => connected?,
        () = stop.wait() => return Ok(()),
    };
    let printed = async {
        for user in &args.watch {
            match client.watch_presence(user).await {
                // One user out of sight does not stop the others.
                Err(e @ imqtt_client::Error::NotVisible(_)) => {
                    eprintln!("imqtt-cli: not watching {user}: {e}");
                }
                watched => watched?,
            }
        }
        print_events(&mut events, session, &device, args.count, out, &mut stop).await
    }
    .await;
    client.close().await;
    printed
}

/// Prints events until a stop, the `count`-th message, or the client's end.
async fn print_events(
    events: &mut Events,
    session: &Session,
    device: &str,
    count: Option<u64>,
    out: Out,
    stop: &mut Stop,
) -> anyhow::Result<()> {
    let mut messages = 0;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            () = stop.wait() => return Ok(()),
        };
        let Some(event) = event else {
            bail!("the client stopped");
        };
        if out.json() {
            let line = event_json(&event, &session.user, device).context("encoding an event")?;
            out.line(&line)?;
        } else {
            out.line(&event_line(&event, &session.user, device))?;
        }
        // Edits and recalls are stored messages too.
        if let ClientEvent::Message(_) | ClientEvent::Edit(_) | ClientEvent::Recall(_) = event {
            messages += 1;
            if count == Some(messages) {
                return Ok(());
            }
        }
    }
}

/// A device name of this run: `cli-` and 32 random bits (from the SDK's
/// `client_msg_id`), so that two listens never replace each other.
fn default_device() -> String {
    let id = imqtt_client::new_client_msg_id();
    let random: String = id
        .rsplit('-')
        .next()
        .unwrap_or("0")
        .chars()
        .take(8)
        .collect();
    format!("cli-{random}")
}

/// A line for people.
fn event_line(event: &ClientEvent, me: &str, device: &str) -> String {
    match event {
        ClientEvent::Connected => format!("-- connected as {me} (device {device})"),
        ClientEvent::Disconnected { reason } => format!("-- disconnected: {}", clean(reason)),
        ClientEvent::Message(m) | ClientEvent::Edit(m) | ClientEvent::Recall(m) => {
            output::message_line(m)
        }
        ClientEvent::Live(m) => format!(
            "{} (live) {}: {}",
            m.conv,
            clean(&m.from),
            output::body_text(&m.body)
        ),
        ClientEvent::Presence(p) => presence_line(p),
        ClientEvent::Group(GroupEvent::MemberAdded { group, user, by }) if user == by => {
            format!("group {}: {} joined", clean(group), clean(user))
        }
        ClientEvent::Group(GroupEvent::MemberAdded { group, user, by }) => {
            format!(
                "group {}: {} added by {}",
                clean(group),
                clean(user),
                clean(by)
            )
        }
        ClientEvent::Group(GroupEvent::MemberRemoved { group, user, by }) if user == by => {
            format!("group {}: {} left", clean(group), clean(user))
        }
        ClientEvent::Group(GroupEvent::MemberRemoved { group, user, by }) => {
            format!(
                "group {}: {} removed by {}",
                clean(group),
                clean(user),
                clean(by)
            )
        }
        ClientEvent::Group(GroupEvent::GroupDeleted { group, by }) => {
            format!("group {}: deleted by {}", clean(group), clean(by))
        }
        ClientEvent::Outbox(e) => outbox_line(e),
        ClientEvent::Read {
            conv, user, seq, ..
        } => {
            format!("{conv}: {} read up to #{seq}", clean(user))
        }
        ClientEvent::Resync => {
            "-- resync: catching up on pushes the server may have missed".to_owned()
        }
    }
}

fn presence_line(p: &Presence) -> String {
    let devices = p.devices.iter().map(|d| clean(d)).collect::<Vec<_>>();
    match p.status {
        PresenceStatus::Online => format!(
            "presence {} online ({})",
            clean(&p.user),
            devices.join(", ")
        ),
        PresenceStatus::Offline => format!("presence {} offline", clean(&p.user)),
    }
}

fn outbox_line(e: &Event) -> String {
    let id = |c: &Option<String>| c.as_deref().map_or_else(|| "-".to_owned(), clean);
    match e {
        Event::Sent {
            client_msg_id,
            conv,
            seq,
            ..
        } => format!("outbox {}: sent {conv} #{seq}", id(client_msg_id)),
        Event::Error {
            client_msg_id,
            error,
        } => format!(
            "outbox {}: refused, {}: {}",
            id(client_msg_id),
            clean(&error.code),
            clean(&error.message)
        ),
        other => format!("event {}", serde_json::to_string(other).unwrap_or_default()),
    }
}

/// A `--json` line: the wire object with a `"type"` put first.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum JsonLine<'a> {
    Connected { user: &'a str, device: &'a str },
    Disconnected { reason: &'a str },
    Message(&'a Envelope),
    Live(&'a LiveMessage),
    Presence(&'a Presence),
}

/// The JSON line for scripts. Group, outbox and resync events are the server's
/// own events (DESIGN.md §4); messages, live messages and presence are the wire
/// objects with a `type` added.
fn event_json(event: &ClientEvent, me: &str, device: &str) -> serde_json::Result<String> {
    match event {
        ClientEvent::Connected => serde_json::to_string(&JsonLine::Connected { user: me, device }),
        ClientEvent::Disconnected { reason } => {
            serde_json::to_string(&JsonLine::Disconnected { reason })
        }
        ClientEvent::Message(m) | ClientEvent::Edit(m) | ClientEvent::Recall(m) => {
            serde_json::to_string(&JsonLine::Message(m))
        }
        ClientEvent::Live(m) => serde_json::to_string(&JsonLine::Live(m)),
        ClientEvent::Presence(p) => serde_json::to_string(&JsonLine::Presence(p)),
        ClientEvent::Group(g) => serde_json::to_string(&group_event(g)),
        ClientEvent::Outbox(e) => serde_json::to_string(e),
        ClientEvent::Resync => serde_json::to_string(&Event::Resync),
        ClientEvent::Read {
            conv,
            user,
            seq,
            ts,
        } => serde_json::to_string(&Event::Read {
            conv: conv.clone(),
            user: user.clone(),
            seq: *seq,
            ts: *ts,
        }),
    }
}

/// The server's event a [`GroupEvent`] came from.
fn group_event(g: &GroupEvent) -> Event {
    match g.clone() {
        GroupEvent::MemberAdded { group, user, by } => Event::MemberAdded { group, user, by },
        GroupEvent::MemberRemoved { group, user, by } => Event::MemberRemoved { group, user, by },
        GroupEvent::GroupDeleted { group, by } => Event::GroupDeleted { group, by },
    }
}

/// Ctrl-C or SIGTERM, listened for from the moment it is made.
struct Stop {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    #[cfg(unix)]
    fn new() -> anyhow::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop {
            interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> anyhow::Result<Stop> {
        Ok(Stop {})
    }

    #[cfg(unix)]
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }

    #[cfg(not(unix))]
    async fn wait(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message() -> Envelope {
        serde_json::from_value(json!({
            "id": "01J", "conv": "dm:alice:bob", "seq": 3, "from": "alice", "to": "bob",
            "ts": 7, "qos": 1, "body": {"text": "hello"}
        }))
        .expect("envelope")
    }

    #[test]
    fn json_lines_are_the_wire_objects_with_their_type_first() {
        let line = event_json(&ClientEvent::Message(message()), "bob", "d").expect("json");
        assert_eq!(
            line,
            r#"{"type":"message","id":"01J","conv":"dm:alice:bob","seq":3,"from":"alice","to":"bob","ts":7,"qos":1,"body":{"text":"hello"}}"#
        );
        let line = event_json(&ClientEvent::Connected, "bob", "phone").expect("json");
        assert_eq!(
            line,
            r#"{"type":"connected","user":"bob","device":"phone"}"#
        );
        let removed = GroupEvent::MemberRemoved {
            group: "team".to_owned(),
            user: "bob".to_owned(),
            by: "alice".to_owned(),
        };
        let line = event_json(&ClientEvent::Group(removed), "bob", "d").expect("json");
        assert_eq!(
            line,
            r#"{"type":"member_removed","group":"team","user":"bob","by":"alice"}"#
        );
        let line = event_json(&ClientEvent::Resync, "bob", "d").expect("json");
        assert_eq!(line, r#"{"type":"resync"}"#);
    }

    #[test]
    fn lines_for_people_name_who_did_what() {
        assert_eq!(
            event_line(&ClientEvent::Message(message()), "bob", "d"),
            "dm:alice:bob #3 alice: hello"
        );
        let left = GroupEvent::MemberRemoved {
            group: "team".to_owned(),
            user: "bob".to_owned(),
            by: "bob".to_owned(),
        };
        assert_eq!(
            event_line(&ClientEvent::Group(left), "bob", "d"),
            "group team: bob left"
        );
        let presence = Presence {
            user: "alice".to_owned(),
            status: PresenceStatus::Online,
            devices: vec!["phone".to_owned(), "laptop".to_owned()],
            ts: 1,
        };
        assert_eq!(
            event_line(&ClientEvent::Presence(presence), "bob", "d"),
            "presence alice online (phone, laptop)"
        );
    }

    #[test]
    fn a_default_device_is_a_valid_id_of_its_own() {
        let (a, b) = (default_device(), default_device());
        assert_ne!(a, b);
        assert!(imqtt_client::wire::is_valid_id(&a), "{a}");
        assert_eq!(a.len(), "cli-".len() + 8, "{a}");
    }
}
