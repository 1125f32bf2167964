//! Every conversation's messages once and in seq order, whatever order and however
//! many times they arrive: pushed over MQTT (duplicates after a reconnect, gaps
//! after a dropped push or a missed connection), pulled in HTTP pages (gap fill,
//! catch-up, large messages announced by a hint). Pure state, no I/O: the session
//! feeds it what arrives and performs the fetches it asks for.
//!
//! Per conversation it keeps `delivered`, the highest seq handed on (unknown for a
//! conversation first met mid-stream until the server's cursor tells it, except
//! that seq 1 needs nobody's word), `target`, the highest seq known to exist, and
//! the pushes that came early. Invariants: messages leave in strictly rising seq
//! order, each at most once; a seq is skipped only when a page of the server's
//! history shows it does not exist (retention, a member's read window).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::wire::{ConvId, ConversationSummary, Envelope, MessagesPage};

/// Early pushes kept per conversation; beyond it the highest are dropped and
/// fetched again later (the target remembers they exist).
const MAX_PENDING: usize = 10_000;

/// A page the session should fetch: `conv`'s messages after `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fetch {
    pub(crate) conv: ConvId,
    pub(crate) after: u64,
}

#[derive(Debug, Default)]
struct Conv {
    delivered: Option<u64>,
    target: u64,
    pending: BTreeMap<u64, Envelope>,
    /// The fetch in flight, with the lowest early push at the time it was asked.
    fetching: Option<Option<u64>>,
    /// `delivered` is the server's cursor, taken as the base, and nothing was
    /// handed on since: it may still move back for the device's own send.
    from_server: bool,
}

/// The ordering state of one client.
#[derive(Debug, Default)]
pub(crate) struct Order {
    convs: HashMap<ConvId, Conv>,
    /// Conversations that may need a fetch: looked at by `next_fetches` only.
    wanting: BTreeSet<ConvId>,
    /// Conversations with early pushes and no known base.
    unknown: HashSet<ConvId>,
    in_flight: usize,
}

impl Order {
    /// Starts from the cursors of a [`crate::CursorStore`].
    pub(crate) fn new(cursors: HashMap<ConvId, u64>) -> Order {
        let convs = cursors
            .into_iter()
            .map(|(conv, seq)| {
                (
                    conv,
                    Conv {
                        delivered: Some(seq),
                        target: seq,
                        ..Conv::default()
                    },
                )
            })
            .collect();
        Order {
            convs,
            ..Order::default()
        }
    }

    /// A pushed envelope; what can now be handed on goes to `out`, in order.
    pub(crate) fn push(&mut self, env: Envelope, out: &mut Vec<Envelope>) {
        let conv_id = env.conv.clone();
        let c = self.convs.entry(conv_id.clone()).or_default();
        if c.delivered.is_none() && env.seq == 1 {
            c.delivered = Some(0);
            self.unknown.remove(&conv_id);
        }
        if c.delivered.is_some_and(|d| env.seq <= d) {
            return;
        }
        c.target = c.target.max(env.seq);
        keep(c, env);
        match c.delivered {
            Some(_) => drain(c, out),
            None => {
                self.unknown.insert(conv_id.clone());
            }
        }
        self.wanting.insert(conv_id);
    }

    /// A hint that `seq` of `conv` exists (a large message, a sync event).
    pub(crate) fn hint(&mut self, conv: &ConvId, seq: u64) {
        let c = self.convs.entry(conv.clone()).or_default();
        c.target = c.target.max(seq);
        if c.delivered.is_none() {
            self.unknown.insert(conv.clone());
        }
        self.wanting.insert(conv.clone());
    }

    /// Fetches whatever of `conv` may exist after what was handed on (a group
    /// just left: nothing after the removal comes, but what came before may
    /// not all have been pushed). Only for a conversation with a base.
    pub(crate) fn drain_known(&mut self, conv: &ConvId) {
        if let Some(c) = self.convs.get_mut(conv)
            && c.delivered.is_some()
        {
            c.target = u64::MAX;
            self.wanting.insert(conv.clone());
        }
    }

    /// Where the caller's conversations stand on the server (`GET
    /// /v1/conversations`): heads raise targets, and a conversation without a
    /// base starts from the server's cursor.
    pub(crate) fn heads(&mut self, list: &[ConversationSummary], out: &mut Vec<Envelope>) {
        for s in list {
            let c = self.convs.entry(s.conv.clone()).or_default();
            if c.delivered.is_none() {
                c.delivered = Some(s.cursor);
                c.from_server = true;
            }
            c.target = c.target.max(s.head);
            drain(c, out);
            self.unknown.remove(&s.conv);
            self.wanting.insert(s.conv.clone());
        }
        // A conversation the server did not list (it cannot be: a push or a
        // hint came from it) would otherwise wait forever: start at its first
        // push, or forget the hint.
        for conv in std::mem::take(&mut self.unknown) {
            if let Some(c) = self.convs.get_mut(&conv) {
                c.delivered = c.pending.keys().next().map(|first| first - 1);
                drain(c, out);
                self.wanting.insert(conv);
            }
        }
    }

    /// This device's own send was stored as `seq` of `conv`. The server moved
    /// the user's cursor past it, so a conversation first met now would start
    /// after it; the application sees its own messages in every conversation's
    /// stream, this one's first included, whichever of the push, the heads and
    /// this news comes first.
    pub(crate) fn own_sent(&mut self, conv: &ConvId, seq: u64, out: &mut Vec<Envelope>) {
        let c = self.convs.entry(conv.clone()).or_default();
        match c.delivered {
            None => {
                c.delivered = Some(seq - 1);
                c.from_server = true;
                self.unknown.remove(conv);
            }
            Some(d) if c.from_server && seq <= d => {
                c.delivered = Some(seq - 1);
                c.target = c.target.max(d);
            }
            Some(_) => {}
        }
        c.target = c.target.max(seq);
        drain(c, out);
        self.wanting.insert(conv.clone());
    }

    /// Whether some conversation waits for its base (the session then asks for
    /// the heads).
    pub(crate) fn needs_heads(&self) -> bool {
        !self.unknown.is_empty()
    }

    /// The answer to `fetch`.
    pub(crate) fn page(&mut self, fetch: &Fetch, page: MessagesPage, out: &mut Vec<Envelope>) {
        let Some(c) = self.convs.get_mut(&fetch.conv) else {
            return;
        };
        let Some(issued_first) = c.fetching.take() else {
            return;
        };
        self.in_flight = self.in_flight.saturating_sub(1);
        self.wanting.insert(fetch.conv.clone());
        let Some(delivered) = c.delivered else {
            return;
        };
        match page.messages.last().map(|m| m.seq) {
            Some(last) => {
                c.target = c.target.max(last);
                for m in page.messages {
                    if m.seq > delivered && m.conv == fetch.conv {
                        keep(c, m);
                    }
                }
                // The page is the server's word on (after, last]: a seq in it
                // that the page lacks does not exist, so skip over it.
                if fetch.after <= delivered {
                    skip_to(c, last, out);
                }
            }
            None if !page.has_more => {
                // Nothing after `after`: early pushes that were already here
                // when the fetch was asked lie outside what we may page (a read
                // window); hand them on rather than wait forever.
                if let Some(first) = issued_first {
                    skip_to(c, first, out);
                }
                c.target = c.delivered.unwrap_or(delivered);
            }
            None => {}
        }
        drain(c, out);
    }

    /// `fetch` failed; it will be asked again by a later `next_fetches`.
    pub(crate) fn fetch_failed(&mut self, fetch: &Fetch) {
        if let Some(c) = self.convs.get_mut(&fetch.conv)
            && c.fetching.take().is_some()
        {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }

    /// Marks `conv` as worth looking at again (after a failed fetch's pause).
    pub(crate) fn want(&mut self, conv: &ConvId) {
        if self.convs.contains_key(conv) {
            self.wanting.insert(conv.clone());
        }
    }

    /// A fetch that `conv` refused for good (no longer a member): stop pulling.
    pub(crate) fn give_up(&mut self, fetch: &Fetch) {
        self.fetch_failed(fetch);
        if let Some(c) = self.convs.get_mut(&fetch.conv) {
            c.target = c.delivered.unwrap_or(0);
            c.pending.clear();
        }
    }

    /// The fetches to start now, keeping at most `max_in_flight` under way.
    pub(crate) fn next_fetches(&mut self, max_in_flight: usize) -> Vec<Fetch> {
        let mut out = Vec::new();
        while self.in_flight < max_in_flight {
            let Some(conv) = self.wanting.pop_first() else {
                break;
            };
            let Some(c) = self.convs.get_mut(&conv) else {
                continue;
            };
            let Some(delivered) = c.delivered else {
                continue;
            };
            if c.fetching.is_some() || c.target <= delivered {
                continue;
            }
            c.fetching = Some(c.pending.keys().next().copied());
            self.in_flight += 1;
            out.push(Fetch {
                conv,
                after: delivered,
            });
        }
        out
    }

    /// Whether any fetch is under way or wanted (for tests and shutdown).
    #[cfg(test)]
    pub(crate) fn idle(&self) -> bool {
        self.in_flight == 0
            && self
                .convs
                .values()
                .all(|c| c.delivered.is_some_and(|d| c.target <= d))
    }
}

/// Keeps an early envelope, within [`MAX_PENDING`].
fn keep(c: &mut Conv, env: Envelope) {
    if c.pending.len() >= MAX_PENDING {
        match c.pending.last_key_value() {
            Some((&max, _)) if env.seq < max => {
                c.pending.remove(&max);
            }
            _ => return,
        }
    }
    c.pending.entry(env.seq).or_insert(env);
}

/// Hands on every kept envelope that follows `delivered` without a gap.
fn drain(c: &mut Conv, out: &mut Vec<Envelope>) {
    let Some(mut d) = c.delivered else { return };
    while let Some(entry) = c.pending.first_entry() {
        let seq = *entry.key();
        if seq <= d {
            entry.remove();
        } else if seq == d + 1 {
            out.push(entry.remove());
            d = seq;
            c.from_server = false;
        } else {
            break;
        }
    }
    c.delivered = Some(d);
}

/// Hands on every kept envelope up to `upto` in order, over any gap (the
/// server has shown those seqs do not exist), and moves `delivered` to `upto`.
fn skip_to(c: &mut Conv, upto: u64, out: &mut Vec<Envelope>) {
    let Some(d) = c.delivered else { return };
    if upto <= d {
        return;
    }
    while let Some(entry) = c.pending.first_entry() {
        if *entry.key() > upto {
            break;
        }
        let env = entry.remove();
        if env.seq > d {
            out.push(env);
        }
    }
    c.delivered = Some(upto);
    c.from_server = false;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::wire::Qos;

    fn conv(s: &str) -> ConvId {
        s.parse().expect("conv")
    }

    fn env(c: &str, seq: u64) -> Envelope {
        Envelope {
            id: format!("{c}-{seq}"),
            conv: conv(c),
            seq,
            from: "a".into(),
            to: "b".into(),
            ts: seq,
            client_msg_id: None,
            qos: Qos::AtLeastOnce,
            body: json!(seq),
            kind: None,
            ref_seq: None,
            edited_ts: None,
            recalled: false,
        }
    }

    fn seqs(out: &[Envelope]) -> Vec<u64> {
        out.iter().map(|e| e.seq).collect()
    }

    fn page(c: &str, range: impl IntoIterator<Item = u64>, has_more: bool) -> MessagesPage {
        MessagesPage {
            messages: range.into_iter().map(|s| env(c, s)).collect(),
            has_more,
        }
    }

    #[test]
    fn pushes_in_order_pass_and_duplicates_are_dropped() {
        let mut o = Order::default();
        let mut out = Vec::new();
        for s in [1, 2, 2, 3, 1, 3, 4] {
            o.push(env("dm:a:b", s), &mut out);
        }
        assert_eq!(seqs(&out), [1, 2, 3, 4]);
        assert!(o.next_fetches(4).is_empty());
        assert!(o.idle());
    }

    #[test]
    fn a_gap_is_filled_from_a_page_before_later_pushes() {
        let mut o = Order::new(HashMap::from([(conv("dm:a:b"), 10)]));
        let mut out = Vec::new();
        o.push(env("dm:a:b", 11), &mut out);
        o.push(env("dm:a:b", 14), &mut out);
        o.push(env("dm:a:b", 15), &mut out);
        assert_eq!(seqs(&out), [11]);
        let f = o.next_fetches(4);
        assert_eq!(
            f,
            [Fetch {
                conv: conv("dm:a:b"),
                after: 11
            }]
        );
        assert!(o.next_fetches(4).is_empty(), "one fetch per conversation");
        o.push(env("dm:a:b", 16), &mut out);
        o.page(&f[0], page("dm:a:b", 12..=14, true), &mut out);
        assert_eq!(seqs(&out), [11, 12, 13, 14, 15, 16]);
        assert!(o.next_fetches(4).is_empty());
        assert!(o.idle());
    }

    #[test]
    fn a_hint_pulls_the_message_it_announces() {
        let mut o = Order::new(HashMap::from([(conv("group:g"), 3)]));
        let mut out = Vec::new();
        o.hint(&conv("group:g"), 4);
        let f = o.next_fetches(4);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].after, 3);
        o.push(env("group:g", 5), &mut out);
        o.page(&f[0], page("group:g", 4..=5, false), &mut out);
        assert_eq!(seqs(&out), [4, 5]);
        assert!(o.idle());
    }

    #[test]
    fn an_unknown_conversation_waits_for_the_servers_cursor() {
        let mut o = Order::default();
        let mut out = Vec::new();
        o.push(env("dm:a:c", 7), &mut out);
        assert!(out.is_empty());
        assert!(o.needs_heads());
        assert!(o.next_fetches(4).is_empty(), "no base, no fetch");
        let head = |cursor| ConversationSummary {
            conv: conv("dm:a:c"),
            head: 7,
            cursor,
            unread: 7 - cursor,
            last_ts: 0,
        };
        o.heads(&[head(5)], &mut out);
        assert!(!o.needs_heads());
        let f = o.next_fetches(4);
        assert_eq!(f[0].after, 5);
        o.page(&f[0], page("dm:a:c", 6..=7, false), &mut out);
        assert_eq!(seqs(&out), [6, 7]);
        assert!(o.idle());
    }

    #[test]
    fn a_hint_for_an_unknown_conversation_asks_for_the_heads() {
        let mut o = Order::default();
        let mut out = Vec::new();
        o.hint(&conv("dm:a:b"), 1);
        assert!(o.needs_heads());
        assert!(o.next_fetches(4).is_empty());
        let head = ConversationSummary {
            conv: conv("dm:a:b"),
            head: 1,
            cursor: 0,
            unread: 1,
            last_ts: 0,
        };
        o.heads(&[head], &mut out);
        let f = o.next_fetches(4);
        assert_eq!(f[0].after, 0);
        o.page(&f[0], page("dm:a:b", [1], false), &mut out);
        assert_eq!(seqs(&out), [1]);
        assert!(o.idle());
    }

    #[test]
    fn the_devices_own_first_message_comes_whichever_news_is_first() {
        // The server's cursor is past the sender's own message.
        let head = ConversationSummary {
            conv: conv("dm:a:b"),
            head: 1,
            cursor: 1,
            unread: 0,
            last_ts: 0,
        };
        // Heads, then the push, then the send's answer.
        let mut o = Order::default();
        let mut out = Vec::new();
        o.heads(std::slice::from_ref(&head), &mut out);
        o.push(env("dm:a:b", 1), &mut out);
        assert!(out.is_empty());
        o.own_sent(&conv("dm:a:b"), 1, &mut out);
        let f = o.next_fetches(4);
        assert_eq!(f[0].after, 0);
        o.page(&f[0], page("dm:a:b", [1], false), &mut out);
        assert_eq!(seqs(&out), [1]);
        // The send's answer first, then heads and push.
        let mut o = Order::default();
        let mut out = Vec::new();
        o.own_sent(&conv("dm:a:b"), 1, &mut out);
        o.heads(std::slice::from_ref(&head), &mut out);
        o.push(env("dm:a:b", 1), &mut out);
        assert_eq!(seqs(&out), [1]);
        // What the device already handed on is never handed again.
        o.own_sent(&conv("dm:a:b"), 1, &mut out);
        assert!(o.next_fetches(4).is_empty());
        assert_eq!(seqs(&out), [1]);
    }

    #[test]
    fn seqs_the_server_does_not_have_are_skipped() {
        // Retention deleted 2..=4: the page after 1 starts at 5.
        let mut o = Order::new(HashMap::from([(conv("sys:u"), 1)]));
        let mut out = Vec::new();
        o.hint(&conv("sys:u"), 6);
        let f = o.next_fetches(4);
        o.page(&f[0], page("sys:u", [5, 6], false), &mut out);
        assert_eq!(seqs(&out), [5, 6]);
        assert!(o.idle());
        // An empty last page ends the pull.
        o.hint(&conv("sys:u"), 9);
        let f = o.next_fetches(4);
        o.page(&f[0], page("sys:u", [], false), &mut out);
        assert!(o.idle());
        assert!(o.next_fetches(4).is_empty());
    }

    #[test]
    fn a_failed_fetch_is_asked_again_and_in_flight_is_bounded() {
        let mut o = Order::default();
        let mut out = Vec::new();
        let list: Vec<ConversationSummary> = (0..5)
            .map(|i| ConversationSummary {
                conv: conv(&format!("sys:u{i}")),
                head: 3,
                cursor: 0,
                unread: 3,
                last_ts: 0,
            })
            .collect();
        o.heads(&list, &mut out);
        let f = o.next_fetches(2);
        assert_eq!(f.len(), 2);
        assert!(o.next_fetches(2).is_empty());
        o.fetch_failed(&f[0]);
        o.want(&f[0].conv);
        let again = o.next_fetches(2);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0], f[0]);
    }

    #[test]
    fn pages_and_pushes_interleaved_any_way_give_each_seq_once_in_order() {
        for seed in 1..=500 {
            interleaved(seed);
        }
    }

    fn interleaved(seed: u64) {
        // Pushes of 1..=200 with drops and duplicates, pages answering fetches
        // as they come: the output is exactly 1..=200.
        let mut o = Order::new(HashMap::from([(conv("dm:a:b"), 0)]));
        let mut out = Vec::new();
        let mut state = seed;
        let mut rand = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut pending: Vec<Fetch> = Vec::new();
        for s in 1..=200u64 {
            if rand() % 3 != 0 {
                o.push(env("dm:a:b", s), &mut out);
            }
            if rand() % 5 == 0 {
                o.push(env("dm:a:b", s.saturating_sub(rand() % 4).max(1)), &mut out);
            }
            pending.extend(o.next_fetches(1));
            if rand() % 2 == 0
                && let Some(f) = pending.pop()
            {
                let upto = (f.after + 1 + rand() % 5).min(s);
                o.page(&f, page("dm:a:b", f.after + 1..=upto, upto < s), &mut out);
            }
        }
        o.hint(&conv("dm:a:b"), 200);
        loop {
            pending.extend(o.next_fetches(1));
            let Some(f) = pending.pop() else { break };
            let upto = (f.after + 3).min(200);
            o.page(&f, page("dm:a:b", f.after + 1..=upto, upto < 200), &mut out);
        }
        assert_eq!(seqs(&out), (1..=200).collect::<Vec<_>>(), "seed {seed}");
    }
}
