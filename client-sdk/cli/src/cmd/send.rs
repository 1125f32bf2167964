//! `send`: one message to a user or a group, through [`Api::send`]: it gets a
//! `client_msg_id` (or the one given), so the retries after a lost answer store
//! it once. `edit` and `recall`: a change to a message sent before.

use anyhow::Context;
use imqtt_client::wire::{ConvId, Qos, SendRequest, SendResult};
use imqtt_client::{Api, Sent};
use serde_json::{Value, json};

use crate::output::{Out, clean};

/// The arguments of `send`. Which positionals mean what depends on `--group`
/// and `--body`, so [`Send::check`] sorts them out after parsing.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  imqtt-cli send bob 'hello'
  imqtt-cli send --group team 'hi all'
  imqtt-cli send bob --body '{\"text\":\"hello\",\"lang\":\"en\"}'
  imqtt-cli send bob --qos 0 --body '{\"typing\":true}'

Prints `CONV #SEQ ID` (--json: {\"id\",\"conv\",\"seq\",\"ts\"}); a qos 0 message is
not stored and has no seq: `live ID` (--json: {\"id\",\"ts\"}).")]
pub(crate) struct Send {
    /// The recipient user (leave it out with --group)
    #[arg(value_name = "TO")]
    to: Option<String>,
    /// The text, sent as {"text": TEXT} (leave it out with --body)
    #[arg(value_name = "TEXT")]
    text: Option<String>,
    /// Send to this group instead of a user
    #[arg(long, value_name = "GID", value_parser = super::id)]
    group: Option<String>,
    /// The body as raw JSON, instead of TEXT (any JSON value)
    #[arg(long, value_name = "JSON", value_parser = json_value)]
    body: Option<Value>,
    /// 0: live only, not stored, no seq; 1: stored (the server's default); 2: stored,
    /// exactly once on the MQTT hop
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: Option<u8>,
    /// Your own client_msg_id: a send repeated with the same id is stored once
    /// [default: a new one]
    #[arg(long = "client-msg-id", value_name = "ID", value_parser = super::id)]
    client_msg_id: Option<String>,
}

impl Send {
    /// The request, or what is wrong with the arguments (a usage error).
    pub(crate) fn check(&self) -> Result<SendRequest, String> {
        // With --group, the one positional is the text.
        let positionals: Vec<&String> = [&self.to, &self.text].into_iter().flatten().collect();
        let (to, text) = match (&self.group, positionals.as_slice()) {
            (Some(_), []) => (None, None),
            (Some(_), [text]) => (None, Some(*text)),
            (Some(_), [_, _, ..]) => {
                return Err("with --group, give the text alone (no TO)".to_owned());
            }
            (None, []) => return Err("whom to? give TO (a user) or --group GID".to_owned()),
            (None, [to, rest @ ..]) => (Some(super::id(to)?), rest.first().copied()),
        };
        let body = match (text, &self.body) {
            (Some(text), None) => json!({ "text": text }),
            (None, Some(body)) => body.clone(),
            (Some(_), Some(_)) => return Err("give TEXT or --body, not both".to_owned()),
            (None, None) => return Err("what to send? give TEXT or --body JSON".to_owned()),
        };
        let qos = match self.qos {
            Some(q) => Some(Qos::try_from(q)?),
            None => None,
        };
        Ok(SendRequest {
            to,
            group: self.group.clone(),
            body,
            client_msg_id: self.client_msg_id.clone(),
            qos,
        })
    }
}

fn json_value(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

pub(crate) async fn run(api: &Api, args: Send, out: Out) -> anyhow::Result<()> {
    let req = args.check().map_err(anyhow::Error::msg).context("send")?;
    let sent = api.send(req).await?;
    match (&sent, out.json()) {
        (Sent::Stored(r), true) => out.value(r),
        (Sent::Live(r), true) => out.value(r),
        (Sent::Stored(r), false) => out.line(&format!("{} #{} {}", r.conv, r.seq, clean(&r.id))),
        (Sent::Live(r), false) => out.line(&format!("live {}", clean(&r.id))),
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  imqtt-cli edit dm:alice:bob 42 'hello, fixed'
  imqtt-cli edit group:team 7 --body '{\"text\":\"fixed\"}'

The edit is a message of its own; prints `CONV #SEQ ID` of it (--json:
{\"id\",\"conv\",\"seq\",\"ts\"}).")]
pub(crate) struct Edit {
    /// The conversation: dm:A:B or group:GID
    #[arg(value_name = "CONV")]
    conv: ConvId,
    /// The seq of your message to edit
    #[arg(value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
    seq: u64,
    /// The new text, sent as {"text": TEXT} (leave it out with --body)
    #[arg(
        value_name = "TEXT",
        required_unless_present = "body",
        conflicts_with = "body"
    )]
    text: Option<String>,
    /// The new body as raw JSON, instead of TEXT
    #[arg(long, value_name = "JSON", value_parser = json_value)]
    body: Option<Value>,
}

pub(crate) async fn edit(api: &Api, args: Edit, out: Out) -> anyhow::Result<()> {
    let body = match (args.text, args.body) {
        (Some(text), _) => json!({ "text": text }),
        (None, Some(body)) => body,
        (None, None) => anyhow::bail!("what to edit it to? give TEXT or --body JSON"),
    };
    let r = api.edit(&args.conv, args.seq, body).await?;
    changed(&r, out)
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Example:
  imqtt-cli recall dm:alice:bob 42

Yours within the server's recall window, or, as a group's owner or admin, any
of the group's. The recall is a message of its own; prints `CONV #SEQ ID` of it.")]
pub(crate) struct Recall {
    /// The conversation: dm:A:B or group:GID
    #[arg(value_name = "CONV")]
    conv: ConvId,
    /// The seq of the message to recall
    #[arg(value_name = "SEQ", value_parser = clap::value_parser!(u64).range(1..))]
    seq: u64,
}

pub(crate) async fn recall(api: &Api, args: Recall, out: Out) -> anyhow::Result<()> {
    let r = api.recall(&args.conv, args.seq).await?;
    changed(&r, out)
}

fn changed(r: &SendResult, out: Out) -> anyhow::Result<()> {
    if out.json() {
        out.value(r)
    } else {
        out.line(&format!("{} #{} {}", r.conv, r.seq, clean(&r.id)))
    }
}
