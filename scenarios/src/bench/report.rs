//! What a benchmark measured, as data: each figure beside the baseline
//! that bounds it (measured in the same run), with the aim if there is
//! one; and the whole suite's report as JSON and Markdown.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Times, bytes, memory.
    Lower,
    /// Rates, throughput.
    Higher,
}

/// One figure of one benchmark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// The benchmark it comes from (`membership`, `dns`...).
    pub bench: String,
    /// What it is, with its conditions (`join convergence, 20 hosts`).
    pub name: String,
    /// Its unit (`ms`, `qps`, `MiB`...).
    pub unit: String,
    /// mesh's value; `None` if it was not reached.
    pub mesh: Option<f64>,
    /// What bounds it, measured in the same run.
    pub baseline: Option<Baseline>,
    /// The aim, in words, if there is one.
    pub aim: Option<String>,
    /// Which way it is better.
    pub better: Better,
}

/// A baseline: a peer system or a physical limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// Its name (`serf`, `dnsmasq`, `hand-built VXLAN`...).
    pub name: String,
    /// Its value; `None` if it was not reached.
    pub value: Option<f64>,
}

impl Figure {
    /// A figure of `bench` in `unit`, better `better`, without baseline.
    pub fn new(bench: &str, name: impl Into<String>, unit: &str, better: Better, mesh: Option<f64>) -> Self {
        Self { bench: bench.into(), name: name.into(), unit: unit.into(), mesh, baseline: None, aim: None, better }
    }

    /// With a baseline.
    #[must_use]
    pub fn against(mut self, name: &str, value: Option<f64>) -> Self {
        self.baseline = Some(Baseline { name: name.into(), value });
        self
    }

    /// With an aim.
    #[must_use]
    pub fn aiming(mut self, aim: &str) -> Self {
        self.aim = Some(aim.into());
        self
    }

    /// mesh / baseline, when both were reached.
    pub fn ratio(&self) -> Option<f64> {
        let baseline = self.baseline.as_ref()?.value?;
        let mesh = self.mesh?;
        (baseline != 0.0).then(|| mesh / baseline)
    }

    /// How many times better mesh is than the baseline (above 1: mesh
    /// wins), when both were reached and neither is zero.
    pub fn advantage(&self) -> Option<f64> {
        let ratio = self.ratio().filter(|r| *r > 0.0)?;
        Some(match self.better {
            Better::Lower => 1.0 / ratio,
            Better::Higher => ratio,
        })
    }

    /// mesh's value, the baseline's (named) and the aim, as table cells.
    fn cells(&self) -> [String; 3] {
        let value =
            |v: Option<f64>| v.map_or_else(|| "not reached".to_owned(), |v| format!("{} {}", number(v), self.unit));
        let baseline =
            self.baseline.as_ref().map_or_else(|| "-".to_owned(), |b| format!("{}: {}", b.name, value(b.value)));
        [value(self.mesh), baseline, self.aim.clone().unwrap_or_else(|| "-".to_owned())]
    }

    /// The plain verdict against the baseline.
    pub fn verdict(&self) -> &'static str {
        let Some(baseline) = &self.baseline else { return "" };
        let (Some(mesh), Some(other)) = (self.mesh, baseline.value) else {
            return if self.mesh.is_none() { "mesh did not reach it" } else { "baseline did not reach it" };
        };
        let wins = match self.better {
            Better::Lower => mesh < other,
            Better::Higher => mesh > other,
        };
        let close = other != 0.0 && (mesh / other - 1.0).abs() < 0.01;
        match (wins, mesh == other, close) {
            (_, true, _) => "tie",
            (_, _, true) => "tie (within 1 %)",
            (true, ..) => "mesh wins",
            (false, ..) => "**mesh loses**",
        }
    }
}

/// The machine the suite ran on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU model.
    pub cpu: String,
    /// Cores available.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// The kernel release.
    pub kernel: String,
}

impl Machine {
    /// This machine, from /proc.
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split(':').nth(1)))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            memory_gib: kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        }
    }
}

/// A whole run of the suite.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// When it started (UTC, RFC 3339).
    pub started: String,
    /// Whether it was the quick run.
    pub quick: bool,
    /// Where it ran.
    pub machine: Machine,
    /// The version of mesh and of every peer, by program.
    pub versions: Vec<(String, String)>,
    /// The simulator's seed.
    pub seed: u64,
    /// What was measured.
    pub figures: Vec<Figure>,
    /// Benchmarks that failed, and why.
    pub failures: Vec<(String, String)>,
}

impl Report {
    /// The report in Markdown: the machine, then a table per benchmark,
    /// losses said plainly.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let run = if self.quick { "quick run" } else { "full run" };
        let _ = writeln!(out, "# mesh benchmarks, {} ({run})\n", self.started);
        let m = &self.machine;
        let _ = writeln!(
            out,
            "Machine: {}, {} cores, {:.1} GiB, Linux {}. Seed {}.\n",
            m.cpu, m.cores, m.memory_gib, m.kernel, self.seed
        );
        let versions: Vec<String> =
            self.versions.iter().map(|(program, version)| format!("{program} {version}")).collect();
        let _ = writeln!(out, "Versions: {}.\n", versions.join("; "));
        out.push_str(&tables(&self.figures));
        if !self.failures.is_empty() {
            let _ = writeln!(out, "## Benchmarks that failed\n");
            for (bench, why) in &self.failures {
                let _ = writeln!(out, "- **{bench}**: {why}");
            }
        }
        out
    }
}

/// A number with as many decimals as its size warrants.
fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

impl Report {
    /// A short summary for the README: the figures with an aim and every
    /// loss, one table, dated, with the command that reproduces them.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let command = if self.quick {
            "sudo target/release/mesh-bench --quick --out DIR"
        } else {
            "sudo target/release/mesh-bench --out DIR"
        };
        let m = &self.machine;
        let _ = writeln!(out, "Measured {} on {} cores ({}), `{command}`:\n", self.started, m.cores, m.cpu);
        let _ = writeln!(out, "| benchmark | figure | mesh | baseline (same run) | aim | verdict |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let shown = self.figures.iter().filter(|f| f.aim.is_some() || f.verdict().contains("loses"));
        for figure in shown {
            let [mesh, baseline, aim] = figure.cells();
            let _ = writeln!(
                out,
                "| {} | {} | {mesh} | {baseline} | {aim} | {} |",
                figure.bench,
                figure.name,
                figure.verdict()
            );
        }
        for (bench, why) in &self.failures {
            let _ = writeln!(out, "| {bench} | failed: {why} | - | - | - | - |");
        }
        out
    }
}

/// The figures as Markdown, a table per benchmark.
pub fn tables(figures: &[Figure]) -> String {
    let mut out = String::new();
    let mut benches: Vec<&str> = figures.iter().map(|f| f.bench.as_str()).collect();
    benches.dedup();
    for bench in benches {
        let _ = writeln!(out, "## {bench}\n");
        let _ = writeln!(out, "| figure | mesh | baseline (same run) | mesh / baseline | aim | verdict |");
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for figure in figures.iter().filter(|f| f.bench == bench) {
            let [mesh, baseline, aim] = figure.cells();
            let ratio = figure.ratio().map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
            let _ = writeln!(out, "| {} | {mesh} | {baseline} | {ratio} | {aim} | {} |", figure.name, figure.verdict());
        }
        let _ = writeln!(out);
    }
    out
}

/// Prints `figures` as Markdown tables on stdout.
pub fn print(figures: &[Figure]) {
    println!("\n{}", tables(figures));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_which_way_is_better() {
        let faster = Figure::new("b", "time", "ms", Better::Lower, Some(5.0)).against("peer", Some(10.0));
        assert_eq!((faster.ratio(), faster.advantage(), faster.verdict()), (Some(0.5), Some(2.0), "mesh wins"));
        let slower = Figure::new("b", "rate", "qps", Better::Higher, Some(5.0)).against("peer", Some(10.0));
        assert_eq!(slower.verdict(), "**mesh loses**");
        let unreached = Figure::new("b", "time", "ms", Better::Lower, None).against("peer", Some(1.0));
        assert_eq!(unreached.verdict(), "mesh did not reach it");
        assert_eq!(Figure::new("b", "x", "ms", Better::Lower, Some(1.0)).verdict(), "");
        let zero = Figure::new("b", "after", "ms", Better::Lower, Some(0.0)).against("peer", Some(0.0));
        assert_eq!(zero.verdict(), "tie");
        let close = Figure::new("b", "rate", "Gbit/s", Better::Higher, Some(19.9)).against("peer", Some(20.0));
        assert_eq!(close.verdict(), "tie (within 1 %)");
        let instant = Figure::new("b", "after", "ms", Better::Lower, Some(0.0)).against("peer", Some(100.0));
        assert_eq!((instant.verdict(), instant.advantage()), ("mesh wins", None));
    }
}
