//! `contacts` (whom you let see your presence) and `presence` (what you may see
//! of others').

use clap::Subcommand;
use imqtt_client::Api;
use imqtt_client::wire::PresenceStatus;
use serde_json::json;

use crate::output::{self, Out, clean, word};

#[derive(Debug, clap::Args)]
pub(crate) struct Contacts {
    #[command(subcommand)]
    command: Option<ContactCommand>,
}

#[derive(Debug, Subcommand)]
enum ContactCommand {
    /// Your contacts (the default)
    List,
    /// Let USER see your presence
    Add {
        #[arg(value_name = "USER", value_parser = super::id)]
        contact: String,
    },
    /// Stop letting USER see your presence (unless a group you share shows it)
    Remove {
        #[arg(value_name = "USER", value_parser = super::id)]
        contact: String,
    },
}

pub(crate) async fn run(api: &Api, args: Contacts, out: Out) -> anyhow::Result<()> {
    match args.command.unwrap_or(ContactCommand::List) {
        ContactCommand::List => {
            let list = api.contacts().await?;
            if out.json() {
                return out.value(&list);
            }
            if list.contacts.is_empty() {
                return out.line("no contacts");
            }
            for c in &list.contacts {
                out.line(&clean(c))?;
            }
            Ok(())
        }
        ContactCommand::Add { contact } => {
            api.add_contact(&contact).await?;
            if out.json() {
                return out.value(&json!({"contact": contact, "added": true}));
            }
            out.line(&format!("{contact} may now see your presence"))
        }
        ContactCommand::Remove { contact } => {
            api.remove_contact(&contact).await?;
            if out.json() {
                return out.value(&json!({"contact": contact, "added": false}));
            }
            out.line(&format!("{contact} is no longer a contact"))
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Users you may not see (not your contacts, no group shared) are listed as not
visible; --json prints the server's answer, which leaves them out:
{\"presence\":[{\"user\",\"status\",\"devices\",\"ts\"}]}.")]
pub(crate) struct Presence {
    /// The users (space- or comma-separated)
    #[arg(
        value_name = "USER",
        required = true,
        value_delimiter = ',',
        value_parser = super::id
    )]
    users: Vec<String>,
}

pub(crate) async fn presence(api: &Api, args: Presence, out: Out) -> anyhow::Result<()> {
    let users: Vec<&str> = args.users.iter().map(String::as_str).collect();
    let list = api.presence(&users).await?;
    if out.json() {
        return out.value(&list);
    }
    let mut rows: Vec<Vec<String>> = list
        .presence
        .iter()
        .map(|p| {
            let devices = match p.status {
                PresenceStatus::Online => p.devices.join(","),
                PresenceStatus::Offline => "-".to_owned(),
            };
            // ts 0: never seen online since the server started.
            let since = if p.ts == 0 {
                "-".to_owned()
            } else {
                output::utc(p.ts)
            };
            vec![p.user.clone(), word(&p.status), since, devices]
        })
        .collect();
    for u in &args.users {
        if !list.presence.iter().any(|p| &p.user == u) {
            rows.push(vec![
                u.clone(),
                "not visible".to_owned(),
                "-".to_owned(),
                "-".to_owned(),
            ]);
        }
    }
    out.table(&["USER", "STATUS", "SINCE", "DEVICES"], &rows)
}
