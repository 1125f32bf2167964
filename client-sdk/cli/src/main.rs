//! `imqtt-cli`: an imqtt server from the command line. Every command but `listen`
//! is one call of the HTTP API through [`imqtt_client::Api`]; `listen` is a device
//! ([`imqtt_client::Client`]) that prints what arrives.
//!
//! Modules: `settings` (which server, user and token: flag > environment >
//! profile), `profile` (the file `login` writes), `output` (lines for people,
//! JSON for scripts), `password` (the login prompt), and `cmd/`, one file per
//! group of commands. Exit codes: 0 done, 1 the command failed (one line on
//! stderr), 2 bad usage.

mod cmd;
mod output;
mod password;
mod profile;
mod settings;

use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use imqtt_client::RetryPolicy;

use crate::output::Out;
use crate::settings::Flags;

/// How sends (idempotently, by `client_msg_id`) and `listen`'s own requests are
/// retried: a command line gives up sooner than an application would.
const RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(100),
    max_delay: Duration::from_secs(2),
    max_elapsed: Duration::from_secs(10),
};

/// The imqtt command line: send, listen, read history, manage groups and contacts.
///
/// Start with `imqtt-cli login --user U` (add `--signup` for a new account): it
/// saves the server, the user and a token to the profile, which every other
/// command then uses. Flags and IMQTT_* variables override the profile.
#[derive(Debug, Parser)]
#[command(name = "imqtt-cli", version, max_term_width = 100)]
struct Cli {
    #[command(flatten, next_help_heading = "Global options")]
    flags: Flags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign in (POST /v1/tokens) and save server, user and token to the profile.
    Login(cmd::login::Login),
    #[command(flatten)]
    Signed(Signed),
}

/// The commands that act as a signed-in user.
#[derive(Debug, Subcommand)]
enum Signed {
    /// Send a message to a user or a group; prints its conversation, seq and id.
    Send(cmd::send::Send),
    /// Edit one of your messages (its new text or body).
    Edit(cmd::send::Edit),
    /// Recall a message: yours, or as a group's owner or admin any of the group's.
    Recall(cmd::send::Recall),
    /// Connect as a device and print each event as it arrives, one line each.
    Listen(cmd::listen::Listen),
    /// The conversations with messages after your cursor, and those messages.
    Sync(cmd::read::Sync),
    /// A page of one conversation's messages, oldest first.
    History(cmd::read::History),
    /// Your conversations: head, cursor, unread count, last message.
    Conversations,
    /// Mark a conversation read up to SEQ (a cursor never moves back).
    Ack(cmd::read::Ack),
    /// How far each member of a conversation has read.
    Reads(cmd::read::Reads),
    /// Your groups, and changing them: list, create, info, add, remove, leave,
    /// delete, role.
    Groups(cmd::groups::Groups),
    /// The presence of users you may see (your contacts' and co-members').
    Presence(cmd::contacts::Presence),
    /// Whom you let see your presence: list, add, remove.
    Contacts(cmd::contacts::Contacts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Signed(Signed::Send(send)) = &cli.command
        && let Err(usage) = send.check()
    {
        // The error of `send` itself, so that its usage line is the one shown.
        let mut command = Cli::command();
        command.build();
        let mut send = command
            .find_subcommand_mut("send")
            .cloned()
            .unwrap_or_default();
        send.error(ErrorKind::ArgumentConflict, usage).exit();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&anyhow::anyhow!("starting the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`imqtt-cli listen | head -1`): nothing left to do.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Prints `e` as one line on stderr; exit code 1.
fn fail(e: &anyhow::Error) -> ExitCode {
    use std::io::Write;
    let line = output::clean(&format!("{e:#}"));
    let _ = writeln!(std::io::stderr(), "imqtt-cli: {line}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = Out::new(cli.flags.json);
    let command = match cli.command {
        Command::Login(login) => return cmd::login::run(&cli.flags, login, out).await,
        Command::Signed(command) => command,
    };
    let session = cli.flags.session()?;
    let api = session.api()?;
    let result = match command {
        Signed::Send(send) => cmd::send::run(&api, send, out).await,
        Signed::Edit(edit) => cmd::send::edit(&api, edit, out).await,
        Signed::Recall(recall) => cmd::send::recall(&api, recall, out).await,
        Signed::Listen(listen) => cmd::listen::run(&session, listen, out).await,
        Signed::Sync(sync) => cmd::read::sync(&api, sync, out).await,
        Signed::History(history) => cmd::read::history(&api, history, out).await,
        Signed::Conversations => cmd::read::conversations(&api, out).await,
        Signed::Ack(ack) => cmd::read::ack(&api, ack, out).await,
        Signed::Reads(reads) => cmd::read::reads(&api, reads, out).await,
        Signed::Groups(groups) => cmd::groups::run(&api, groups, out).await,
        Signed::Presence(presence) => cmd::contacts::presence(&api, presence, out).await,
        Signed::Contacts(contacts) => cmd::contacts::run(&api, contacts, out).await,
    };
    result.map_err(|e| session.explain(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// A subcommand argument with the id of a global flag (`user`) would be
    /// read as that flag: `contacts add bob` acting as bob.
    #[test]
    fn arguments_never_land_in_the_global_flags() {
        for args in [
            &["contacts", "add", "bob"][..],
            &["groups", "add", "g", "bob"],
            &["groups", "remove", "g", "bob"],
            &["groups", "role", "g", "bob", "admin"],
            &["presence", "bob"],
            &["send", "bob", "hi"],
            &["history", "dm:alice:bob"],
        ] {
            let argv = std::iter::once("imqtt-cli").chain(args.iter().copied());
            let cli = Cli::try_parse_from(argv).expect("parse");
            assert_ne!(cli.flags.user.as_deref(), Some("bob"), "{args:?}");
        }
    }
}
