//! `mesh events`.

use super::{Format, OutputOpts};
use crate::api::{self, EventBody};

/// Prints membership and record changes as they happen, until the agent
/// stops (or the user interrupts).
pub(crate) async fn run(opts: &OutputOpts) -> anyhow::Result<()> {
    let format = opts.format;
    opts.client
        .client()
        .stream_lines(
            api::EVENTS,
            || eprintln!("watching for changes (Ctrl-C to stop)"),
            |line| match (format, serde_json::from_str::<EventBody>(line)) {
                (Format::Table, Ok(event)) => println!("{}", describe(&event)),
                _ => println!("{line}"),
            },
        )
        .await?;
    anyhow::bail!("the agent ended the stream (it is stopping)")
}

/// One event on one line: time, what, and about what.
fn describe(event: &EventBody) -> String {
    let subject: Vec<&str> =
        [event.member.as_deref(), event.network.as_deref(), event.endpoint.as_deref()].into_iter().flatten().collect();
    let line = format!("{}  {:<17} {:<24} {}", clock(event.at_ms), event.event, subject.join("/"), event.detail);
    line.trim_end().to_owned()
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(at_ms: u64) -> String {
    let (secs, ms) = (at_ms / 1000, at_ms % 1000);
    format!("{:02}:{:02}:{:02}.{ms:03}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_as_one_aligned_line() {
        let event = EventBody {
            at_ms: 3_723_004,
            event: "endpoint-added".into(),
            member: Some("h1".into()),
            network: Some("dev".into()),
            endpoint: Some("svc1".into()),
            detail: "10.0.0.2, active".into(),
        };
        assert_eq!(describe(&event), "01:02:03.004  endpoint-added    h1/dev/svc1              10.0.0.2, active");
    }
}
