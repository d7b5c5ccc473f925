//! Flow control of the TLS layer, as asyncio's `SSLProtocol` decides it:
//! pause at or above the high-water mark, resume at or below the low one.
//! (Socket transports pause only *above* the high mark; that is
//! `transport::base`'s rule, not this one.)

/// What `_control_app_writing` / `_control_ssl_reading` do for a buffer of
/// `size` bytes given the marks and whether the other side is paused now.
#[derive(Debug, PartialEq, Eq)]
pub enum FlowChange {
    Pause,
    Resume,
    Keep,
}

pub fn flow_change(size: f64, high: f64, low: f64, paused: bool) -> FlowChange {
    if size >= high && !paused {
        FlowChange::Pause
    } else if size <= low && paused {
        FlowChange::Resume
    } else {
        FlowChange::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_at_the_high_mark_not_below() {
        assert_eq!(flow_change(100.0, 100.0, 25.0, false), FlowChange::Pause);
        assert_eq!(flow_change(99.0, 100.0, 25.0, false), FlowChange::Keep);
        assert_eq!(flow_change(500.0, 100.0, 25.0, true), FlowChange::Keep);
    }

    #[test]
    fn resumes_at_the_low_mark_not_above() {
        assert_eq!(flow_change(25.0, 100.0, 25.0, true), FlowChange::Resume);
        assert_eq!(flow_change(26.0, 100.0, 25.0, true), FlowChange::Keep);
        assert_eq!(flow_change(0.0, 100.0, 25.0, false), FlowChange::Keep);
    }

    #[test]
    fn zero_marks_pause_on_any_byte_and_resume_only_when_empty() {
        assert_eq!(flow_change(0.0, 0.0, 0.0, false), FlowChange::Pause);
        assert_eq!(flow_change(1.0, 0.0, 0.0, true), FlowChange::Keep);
        assert_eq!(flow_change(0.0, 0.0, 0.0, true), FlowChange::Resume);
    }
}
