//! Several addresses for one server (the nodes of a cluster, or a standby), tried
//! in turn like paho's list of server URIs. A list is given as strings, each of
//! which may itself hold several addresses separated by commas
//! (`"mqtt://a:1883,mqtt://b:1883"`, as `imqtt-cli --mqtt` takes them). The
//! address in use stays in use while it works; when it fails the next one is
//! taken, round robin, so the first comes back only after the others were tried.
//!
//! [`HttpServers`] is shared by the clones of an [`crate::Api`] (any request may
//! find the server away); [`MqttServers`] belongs to the MQTT loop alone.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Error;

/// The addresses in `lists`, each list split at its commas, each address
/// trimmed; an empty address (`"a,,b"`, `""`) is an error, since it is almost
/// certainly a typo that would otherwise go unseen until failover.
fn addresses<I, S>(lists: I, what: &str) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = Vec::new();
    for list in lists {
        let list = list.as_ref();
        for addr in list.split(',') {
            let addr = addr.trim();
            if addr.is_empty() {
                return Err(Error::Config(format!(
                    "{what} {list:?}: an empty address in the list"
                )));
            }
            out.push(addr.to_owned());
        }
    }
    if out.is_empty() {
        return Err(Error::Config(format!("no {what} given")));
    }
    Ok(out)
}

/// The HTTP API's roots, and which one requests go to.
#[derive(Debug)]
pub(crate) struct HttpServers {
    bases: Box<[String]>,
    /// Index into `bases`; only ever moves on, by [`HttpServers::failed`].
    current: AtomicUsize,
}

impl HttpServers {
    /// The roots of `urls` (`http://host:port`, each checked), the first in use.
    pub(crate) fn parse<I, S>(urls: I) -> Result<HttpServers, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let bases = addresses(urls, "http url")?
            .iter()
            .map(|u| base_url(u))
            .collect::<Result<_, _>>()?;
        Ok(HttpServers {
            bases,
            current: AtomicUsize::new(0),
        })
    }

    /// How many there are: a request tries each at most once.
    pub(crate) fn len(&self) -> usize {
        self.bases.len()
    }

    /// The root in use, with its index for [`HttpServers::failed`].
    pub(crate) fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len();
        (i, &self.bases[i])
    }

    /// Root `index` failed a request: the next one is used from now on, unless
    /// another request already moved on from it (a burst of failures on one
    /// server moves once, not past the server that works).
    pub(crate) fn failed(&self, index: usize) {
        let next = (index + 1) % self.bases.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The server's root from `http_url`, checked: `http://host:port`, no path.
fn base_url(http_url: &str) -> Result<String, Error> {
    let base = http_url.trim_end_matches('/').to_owned();
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| Error::Config(format!("http url {http_url:?}: must be http://")))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(Error::Config(format!(
            "http url {http_url:?}: give the server's root, http://host:port"
        )));
    }
    Ok(base)
}

/// The MQTT listeners, and which one the next connection goes to.
#[derive(Debug)]
pub(crate) struct MqttServers {
    addrs: Vec<(String, u16)>,
    current: usize,
}

impl MqttServers {
    /// The listeners of `urls` (`mqtt://host:port`, each checked), the first in
    /// use.
    pub(crate) fn parse<I, S>(urls: I) -> Result<MqttServers, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let addrs = addresses(urls, "mqtt url")?
            .iter()
            .map(|u| mqtt_address(u))
            .collect::<Result<_, _>>()?;
        Ok(MqttServers { addrs, current: 0 })
    }

    /// How many there are: one round of failures is this many.
    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Host and port of the one in use.
    pub(crate) fn current(&self) -> (&str, u16) {
        let (host, port) = &self.addrs[self.current];
        (host, *port)
    }

    /// The one in use failed: the next one, round robin.
    pub(crate) fn advance(&mut self) {
        self.current = (self.current + 1) % self.addrs.len();
    }
}

/// Host and port of `mqtt://host:port`, `tcp://host:port` or `host:port`.
fn mqtt_address(url: &str) -> Result<(String, u16), Error> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    if rest.contains("://") || rest.contains('/') || rest.is_empty() {
        return Err(Error::Config(format!(
            "mqtt url {url:?}: expected mqtt://host:port"
        )));
    }
    // [v6]:port, host:port, or a bare host.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| Error::Config(format!("mqtt url {url:?}: bad port {p:?}")))?;
            (h.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (rest, 1883),
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse() {
        let ok = |u: &str| mqtt_address(u).expect(u);
        assert_eq!(ok("mqtt://127.0.0.1:1884"), ("127.0.0.1".into(), 1884));
        assert_eq!(ok("tcp://localhost"), ("localhost".into(), 1883));
        assert_eq!(ok("example.org:8883"), ("example.org".into(), 8883));
        assert_eq!(ok("mqtt://[::1]:1999"), ("::1".into(), 1999));
        for bad in [
            "",
            "mqtt://",
            "ws://h:1/mqtt",
            "mqtt://h:port",
            "mqtt://h:99999",
        ] {
            assert!(mqtt_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_come_as_commas_or_as_items_and_go_round() {
        let mut m = MqttServers::parse(["mqtt://a:1, b:2", "mqtt://c"]).expect("list");
        assert_eq!(m.len(), 3);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (host, port) = m.current();
            seen.push(format!("{host}:{port}"));
            m.advance();
        }
        assert_eq!(seen, ["a:1", "b:2", "c:1883", "a:1"]);
        for bad in [
            &["mqtt://a:1,"][..],
            &[""],
            &[],
            &["a:1,,b:2"],
            &["a:1,ws://b"],
        ] {
            assert!(MqttServers::parse(bad).is_err(), "{bad:?}");
        }
        let h = HttpServers::parse(["http://a:1/, http://b:2"]).expect("list");
        assert_eq!(h.current(), (0, "http://a:1"));
        for bad in [&["http://a:1,"][..], &["http://a:1,https://b"], &[]] {
            assert!(HttpServers::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn failures_of_one_server_move_on_once() {
        let h = HttpServers::parse(["http://a:1,http://b:2,http://c:3"]).expect("list");
        // Three requests in flight on a, all failing: b is the one in use.
        for _ in 0..3 {
            h.failed(0);
        }
        assert_eq!(h.current(), (1, "http://b:2"));
        h.failed(1);
        h.failed(2);
        assert_eq!(h.current(), (0, "http://a:1"), "round robin");
    }
}
