//! `groups`: the user's groups, and creating, inspecting, joining, leaving and
//! managing them.

use clap::{Subcommand, ValueEnum};
use imqtt_client::Api;
use imqtt_client::wire::{CreateGroupRequest, GroupRole, HistoryVisible};
use serde_json::json;

use crate::output::{Out, clean, word};

#[derive(Debug, clap::Args)]
pub(crate) struct Groups {
    #[command(subcommand)]
    command: Option<GroupCommand>,
}

#[derive(Debug, Subcommand)]
enum GroupCommand {
    /// Your groups, with your role in each (the default)
    List,
    /// Create a group; you are its owner
    Create {
        /// Display name
        name: String,
        /// The group id [default: one the server picks]
        #[arg(long, value_name = "GID", value_parser = super::id)]
        id: Option<String>,
        /// Anyone may join by adding themselves
        #[arg(long)]
        open: bool,
        /// What members may read of the messages from before they joined
        /// [default: since_join]
        #[arg(long, value_enum, value_name = "WHAT")]
        history: Option<History>,
    },
    /// A group's settings and members
    Info {
        #[arg(value_name = "GID", value_parser = super::id)]
        gid: String,
    },
    /// Add members (owner and admins; on an open group, yourself)
    Add {
        #[arg(value_name = "GID", value_parser = super::id)]
        gid: String,
        #[arg(value_name = "USER", required = true, value_parser = super::id)]
        members: Vec<String>,
    },
    /// Remove a member (owner; admins remove plain members)
    Remove {
        #[arg(value_name = "GID", value_parser = super::id)]
        gid: String,
        #[arg(value_name = "USER", value_parser = super::id)]
        member: String,
    },
    /// Leave a group (an owner must hand it over or delete it)
    Leave {
        #[arg(value_name = "GID", value_parser = super::id)]
        gid: String,
    },
    /// Delete a group (owner); every member is told
    Delete {
        #[arg(value_name = "GID", value_parser = super::id)]
        gid: String,
    },
    /// Make a member admin or member again, or hand the group over (owner)
    Role {
        #[arg(value_name = "GID", value_parser = super::id)]
        gid: String,
        #[arg(value_name = "USER", value_parser = super::id)]
        member: String,
        #[arg(value_enum)]
        role: Role,
    },
}

/// `--history`: `all` or `since_join`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum History {
    All,
    #[value(name = "since_join", alias = "since-join")]
    SinceJoin,
}

/// A member's role, as `groups role` sets it.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Role {
    Owner,
    Admin,
    Member,
}

pub(crate) async fn run(api: &Api, args: Groups, out: Out) -> anyhow::Result<()> {
    match args.command.unwrap_or(GroupCommand::List) {
        GroupCommand::List => list(api, out).await,
        GroupCommand::Create {
            name,
            id,
            open,
            history,
        } => {
            let req = CreateGroupRequest {
                id,
                name,
                open: open.then_some(true),
                history_visible: history.map(|h| match h {
                    History::All => HistoryVisible::All,
                    History::SinceJoin => HistoryVisible::SinceJoin,
                }),
            };
            let g = api.create_group(&req).await?;
            if out.json() {
                return out.value(&g);
            }
            out.line(&format!(
                "created group {} \"{}\" (owner {}, {}, history {})",
                clean(&g.id),
                clean(&g.name),
                clean(&g.owner),
                openness(g.open),
                word(&g.history_visible)
            ))
        }
        GroupCommand::Info { gid } => {
            let g = api.group(&gid).await?;
            if out.json() {
                return out.value(&g);
            }
            out.line(&format!(
                "{} \"{}\": owner {}, {}, history {}, {} members",
                clean(&g.id),
                clean(&g.name),
                clean(&g.owner),
                openness(g.open),
                word(&g.history_visible),
                g.members.len()
            ))?;
            let rows: Vec<Vec<String>> = g
                .members
                .iter()
                .map(|m| vec![m.user.clone(), word(&m.role)])
                .collect();
            out.table(&["USER", "ROLE"], &rows)
        }
        GroupCommand::Add { gid, members } => {
            let users: Vec<&str> = members.iter().map(String::as_str).collect();
            let added = api.add_members(&gid, &users).await?;
            if out.json() {
                return out.value(&added);
            }
            if added.added.is_empty() {
                out.line(&format!("nobody added to {gid}: already members"))
            } else {
                let names: Vec<String> = added.added.iter().map(|u| clean(u)).collect();
                out.line(&format!("added to {gid}: {}", names.join(", ")))
            }
        }
        GroupCommand::Remove { gid, member } => {
            api.remove_member(&gid, &member).await?;
            if out.json() {
                return out.value(&json!({"group": gid, "removed": member}));
            }
            out.line(&format!("removed {member} from {gid}"))
        }
        GroupCommand::Leave { gid } => {
            api.remove_member(&gid, api.user()).await?;
            if out.json() {
                return out.value(&json!({"group": gid, "left": api.user()}));
            }
            out.line(&format!("left {gid}"))
        }
        GroupCommand::Delete { gid } => {
            api.delete_group(&gid).await?;
            if out.json() {
                return out.value(&json!({"group": gid, "deleted": true}));
            }
            out.line(&format!("deleted {gid}"))
        }
        GroupCommand::Role { gid, member, role } => {
            let role = match role {
                Role::Owner => GroupRole::Owner,
                Role::Admin => GroupRole::Admin,
                Role::Member => GroupRole::Member,
            };
            api.set_role(&gid, &member, role).await?;
            if out.json() {
                return out.value(&json!({"group": gid, "user": member, "role": role}));
            }
            out.line(&format!("{member} is now {} of {gid}", word(&role)))
        }
    }
}

async fn list(api: &Api, out: Out) -> anyhow::Result<()> {
    let list = api.groups().await?;
    if out.json() {
        return out.value(&list);
    }
    if list.groups.is_empty() {
        return out.line("no groups");
    }
    let rows: Vec<Vec<String>> = list
        .groups
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.owner.clone(),
                word(&g.role),
                openness(g.open).to_owned(),
                word(&g.history_visible),
                g.name.clone(),
            ]
        })
        .collect();
    out.table(&["ID", "OWNER", "ROLE", "JOIN", "HISTORY", "NAME"], &rows)
}

fn openness(open: bool) -> &'static str {
    if open { "open" } else { "closed" }
}
