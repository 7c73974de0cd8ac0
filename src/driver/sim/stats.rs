//! [`SimStats`]: how often the simulator did each thing a real kernel does
//! that it models on purpose, so a sweep can show (and assert) that it
//! exercised them. The contract's counters are [`DriverStats`](crate::DriverStats).

/// What the simulator injected, per behaviour, since the driver was created
/// (see [`Handle::sim_stats`](crate::Handle::sim_stats)). Each field names
/// the kernel behaviour it models; [`SimConfig`](super::SimConfig) has the
/// knob of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Waits whose completions were reaped in another order than they were
    /// produced in (each socket's ops of one kind still in order).
    pub reaps_reordered: u64,
    /// Waits that held completions back for a later wait (produced, not
    /// reaped), with newer completions of other sockets reaped first.
    pub reaps_held_back: u64,
    /// Waits interrupted by a signal (`EINTR`): early, with nothing.
    pub interrupted_waits: u64,
    /// Zero-timeout waits that returned nothing although ops could complete.
    pub empty_polls: u64,
    /// Cancels that landed mid-send: "aborted after N bytes" (IOCP).
    pub partial_cancels: u64,
    /// Sends partly accepted, then the connection reset (fault).
    pub send_resets: u64,
    /// Connections reset by the network while idle or at a data op (fault).
    pub resets: u64,
    /// SYN retransmissions of TCP connects (full accept queue, or dropped).
    pub syn_retransmits: u64,
    /// TCP connects that failed with `ETIMEDOUT`.
    pub connect_timeouts: u64,
    /// Accepts that failed for lack of resources (`EMFILE`, `ENOBUFS`, `ENOMEM`).
    pub accept_resource_errors: u64,
    /// Of those, `ENOBUFS`.
    pub accept_enobufs: u64,
    /// TCP sends accepted after the peer had closed: the bytes are lost and
    /// the next send fails (`EPIPE`).
    pub sends_to_closed_peer: u64,
    /// Unix sends to a closed peer, failed at once with `EPIPE`.
    pub unix_epipes: u64,
    /// Unix sends blocked by the Unix buffer rule (the sender's `SO_SNDBUF`
    /// only) where TCP's rule would have had room.
    pub unix_sndbuf_stalls: u64,
    /// Unix connects refused with `EAGAIN` (full backlog).
    pub unix_connect_eagain: u64,
    /// Multishot receives ended by an empty buffer ring (`ENOBUFS`).
    pub multishot_enobufs: u64,
    /// Multishot receives the kernel ended after an arrival (no `MORE`).
    pub multishot_ends: u64,
}
