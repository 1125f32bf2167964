//! Reading: `sync` (what is new since your cursors), `history` (a page of one
//! conversation), `conversations` (where each stands), `ack` (move a cursor) and
//! `reads` (how far each member has read).

use std::collections::BTreeMap;

use imqtt_client::Api;
use imqtt_client::wire::{AckRequest, ConvId, MessagesQuery, ReadsQuery, SyncQuery};
use serde_json::json;

use crate::output::{self, Out};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints, per conversation, `CONV: N new (cursor C, head H)` and its messages as
`CONV #SEQ FROM: TEXT`; --json prints the server's answer,
{\"conversations\":[{\"conv\",\"head\",\"cursor\",\"messages\",\"has_more\"}]}.")]
pub(crate) struct Sync {
    /// At most N messages per conversation [default: the server's, 100]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Then ack what was shown (each conversation up to its last message shown)
    #[arg(long)]
    ack: bool,
}

pub(crate) async fn sync(api: &Api, args: Sync, out: Out) -> anyhow::Result<()> {
    let answer = api.sync(SyncQuery { limit: args.limit }).await?;
    if out.json() {
        out.value(&answer)?;
    } else if answer.conversations.is_empty() {
        out.line("nothing new")?;
    }
    let mut shown = BTreeMap::new();
    for c in &answer.conversations {
        if !out.json() {
            out.line(&format!(
                "{}: {} new (cursor {}, head {})",
                c.conv,
                c.head.saturating_sub(c.cursor),
                c.cursor,
                c.head
            ))?;
            for m in &c.messages {
                out.line(&output::message_line(m))?;
            }
            if let (true, Some(last)) = (c.has_more, c.messages.last()) {
                out.line(&format!(
                    "... {} more: imqtt-cli history {} --after {}",
                    c.head.saturating_sub(last.seq),
                    c.conv,
                    last.seq
                ))?;
            }
        }
        if let Some(last) = c.messages.last() {
            shown.insert(c.conv.clone(), last.seq);
        }
    }
    if args.ack && !shown.is_empty() {
        api.ack(&AckRequest { cursors: shown }).await?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints `CONV #SEQ FROM: TEXT` per message, oldest first, and when the page is not
the end, the command for the next one; --json prints the server's answer,
{\"messages\":[...envelopes],\"has_more\"}.")]
pub(crate) struct History {
    /// The conversation: dm:A:B, group:GID or sys:UID
    #[arg(value_name = "CONV")]
    conv: ConvId,
    /// Messages after seq S [default: from the first]
    #[arg(long, value_name = "S", conflicts_with = "before")]
    after: Option<u64>,
    /// Messages before seq S, the newest of them (to page backwards)
    #[arg(long, value_name = "S")]
    before: Option<u64>,
    /// At most N messages [default: the server's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
}

pub(crate) async fn history(api: &Api, args: History, out: Out) -> anyhow::Result<()> {
    let query = MessagesQuery {
        after: args.after,
        before: args.before,
        limit: args.limit,
    };
    let page = api.messages(&args.conv, query).await?;
    if out.json() {
        return out.value(&page);
    }
    if page.messages.is_empty() {
        out.line(&format!("no messages in {}", args.conv))?;
    }
    for m in &page.messages {
        out.line(&output::message_line(m))?;
    }
    let next = match (args.before, page.messages.first(), page.messages.last()) {
        (Some(_), Some(first), _) => format!("--before {}", first.seq),
        (None, _, Some(last)) => format!("--after {}", last.seq),
        _ => return Ok(()),
    };
    if page.has_more {
        out.line(&format!("... more: imqtt-cli history {} {next}", args.conv))?;
    }
    Ok(())
}

pub(crate) async fn conversations(api: &Api, out: Out) -> anyhow::Result<()> {
    let list = api.conversations().await?;
    if out.json() {
        return out.value(&list);
    }
    if list.conversations.is_empty() {
        return out.line("no conversations");
    }
    let rows: Vec<Vec<String>> = list
        .conversations
        .iter()
        .map(|c| {
            vec![
                c.conv.to_string(),
                c.head.to_string(),
                c.cursor.to_string(),
                c.unread.to_string(),
                output::utc(c.last_ts),
            ]
        })
        .collect();
    out.table(&["CONV", "HEAD", "CURSOR", "UNREAD", "LAST"], &rows)
}

#[derive(Debug, clap::Args)]
pub(crate) struct Ack {
    /// The conversation: dm:A:B, group:GID or sys:UID
    #[arg(value_name = "CONV")]
    conv: ConvId,
    /// The highest seq read (at most the conversation's head)
    #[arg(value_name = "SEQ")]
    seq: u64,
}

pub(crate) async fn ack(api: &Api, args: Ack, out: Out) -> anyhow::Result<()> {
    let cursors = BTreeMap::from([(args.conv.clone(), args.seq)]);
    api.ack(&AckRequest { cursors }).await?;
    if out.json() {
        out.value(&json!({"conv": args.conv, "seq": args.seq}))
    } else {
        out.line(&format!("acked {} up to #{}", args.conv, args.seq))
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints `USER read up to #SEQ` for each member, by user id; --json prints the
server's answer, {\"reads\":[{\"user\",\"seq\"}],\"has_more\"}.")]
pub(crate) struct Reads {
    /// The conversation: dm:A:B, group:GID or sys:UID
    #[arg(value_name = "CONV")]
    conv: ConvId,
    /// Members whose id sorts after UID (to page on)
    #[arg(long, value_name = "UID")]
    after: Option<String>,
    /// At most N members [default: the server's, 100]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
}

pub(crate) async fn reads(api: &Api, args: Reads, out: Out) -> anyhow::Result<()> {
    let query = ReadsQuery {
        after: args.after,
        limit: args.limit,
    };
    let page = api.reads(&args.conv, query).await?;
    if out.json() {
        return out.value(&page);
    }
    for r in &page.reads {
        out.line(&format!("{} read up to #{}", output::clean(&r.user), r.seq))?;
    }
    if page.has_more
        && let Some(last) = page.reads.last()
    {
        out.line(&format!("-- more: --after {}", output::clean(&last.user)))?;
    }
    Ok(())
}
