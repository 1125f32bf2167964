//! The login password when no flag or variable gives it: asked on the terminal
//! with the echo off, or read as the first line of stdin when that is a pipe
//! (`printf '%s\n' "$PW" | imqtt-cli login --user alice`).

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context, bail};

use crate::settings::Secret;

/// Asks for `user`'s password. Blocking: call it off the runtime's thread.
pub(crate) fn ask(user: &str) -> anyhow::Result<Secret> {
    let stdin = std::io::stdin();
    let line = if stdin.is_terminal() {
        let mut stderr = std::io::stderr();
        write!(stderr, "password for {user}: ")
            .and_then(|()| stderr.flush())
            .context("writing the prompt")?;
        let line = without_echo(|| read_line(&stdin))?;
        let _ = writeln!(stderr);
        line?
    } else {
        read_line(&stdin)?
    };
    if line.is_empty() {
        bail!("no password: give --password, set IMQTT_PASSWORD, or type it when asked");
    }
    Ok(Secret::new(line))
}

/// One line of stdin without its line ending.
fn read_line(stdin: &std::io::Stdin) -> anyhow::Result<String> {
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let end = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(end);
    Ok(line)
}

/// Runs `f` with the terminal on stdin not echoing what is typed.
#[cfg(unix)]
fn without_echo<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).context("turning the echo off")?;
    let result = f();
    tcsetattr(&stdin, OptionalActions::Now, &saved).context("turning the echo back on")?;
    Ok(result)
}

/// Elsewhere the password is echoed: no portable way to stop that without
/// unsafe code.
#[cfg(not(unix))]
fn without_echo<T>(f: impl FnOnce() -> T) -> anyhow::Result<T> {
    Ok(f())
}
