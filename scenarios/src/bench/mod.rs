//! Benchmarks: figures beside the baseline that bounds them, measured in
//! the same run (the machine is shared and noisy), never assertions.
//!
//! - [`membership`]: join convergence, failure detection, memory, idle
//!   CPU and idle traffic, beside Serf on the same lab.
//! - [`verdicts`]: false "down" verdicts under loss and a frozen agent,
//!   beside Serf under the same faults.
//! - [`records`]: how fast a sandbox reaches every host's view, beside a
//!   Serf user event on the same lab.
//! - [`entries`]: 10,000 remote endpoints programmed into one host,
//!   beside iproute2's batch mode, directly and through the agents
//!   ([`view_to_kernel`]).
//! - [`dns`]: dnsperf against mesh's resolver serving 1,000 names, beside
//!   dnsmasq serving the same names; and how soon a new sandbox's name
//!   resolves on another host.
//! - [`docker`]: `docker run` on one host to the container resolved and
//!   pinged from another, through mesh's plugin beside Docker swarm's
//!   overlay on the same lab.
//! - [`overlay`]: iperf3 across the overlay, beside a hand-built VXLAN
//!   pair and the raw underlay.
//! - [`encrypted`]: iperf3 and ping across an encrypted network, beside
//!   Nebula, wireguard-go, the plaintext overlay and the raw underlay; the
//!   agent's CPU per Gbit carried and its memory ([`iperf`] runs the
//!   traffic of both).
//! - [`suite`]: all of them in turn (`mesh-bench`), into one report
//!   ([`report`]): JSON, Markdown and a plot.
//! - [`sim`]: dissemination of a change to 1,000-10,000 simulated nodes,
//!   beside memberlist's gossip model on the same simulated network.

pub mod dns;
pub mod docker;
pub mod encrypted;
pub mod entries;
mod injected;
mod iperf;
pub mod membership;
pub mod overlay;
mod plot;
pub mod records;
pub mod report;
mod serf_rpc;
pub mod sim;
pub mod suite;
mod systems;
pub mod verdicts;
mod view_to_kernel;

/// The median of `values` (sorts them).
fn median(values: &mut [f64]) -> f64 {
    percentile(values, 50.0)
}

/// The `p`th percentile of `values` (nearest rank; sorts them).
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * values.len() as f64).ceil().max(1.0);
    // The rank is within 1..=len, so the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let index = (rank as usize).min(values.len()) - 1;
    values[index]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_by_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&mut values, 50.0), 50.0);
        assert_eq!(super::percentile(&mut values, 99.0), 99.0);
        assert_eq!(super::percentile(&mut values, 100.0), 100.0);
        assert!(super::median(&mut []).is_nan());
    }
}
