//! Part 1: the per-packet cost, from `tests/examples/bench_testrun.rs` (it
//! needs the XDP object, which xtask must not link).

use anyhow::{Context, Result};

use super::stats::median;

pub struct Class {
    pub key: String,
    pub label: String,
    pub samples_ns: Vec<f64>,
}

impl Class {
    pub fn median(&self) -> f64 {
        median(&self.samples_ns).unwrap_or(f64::NAN)
    }
}

pub struct TestRun {
    pub rounds: u64,
    pub repeat: u64,
    pub event_chunk: u64,
    pub classes: Vec<Class>,
    pub single_empty_ns: Vec<f64>,
    pub single_hit_ns: Vec<f64>,
    /// Counter deltas over the rounds, per loaded program.
    pub counters_plain: serde_json::Value,
    pub counters_steps: serde_json::Value,
    pub counters_gated: serde_json::Value,
    /// Events the first-step class emitted (must be 0), when it ran.
    pub first_step_events: Option<u64>,
    /// Classes this kernel cannot run: (key, label, why).
    pub unavailable: Vec<(String, String, String)>,
    /// Names of the program's maps, as the kernel has them.
    pub kernel_maps: Vec<String>,
}

impl TestRun {
    pub fn class(&self, key: &str) -> Option<&Class> {
        self.classes.iter().find(|c| c.key == key)
    }

    pub fn empty(&self) -> f64 {
        self.class("empty").map_or(f64::NAN, Class::median)
    }

    /// Why a class did not run, e.g. "n/a (kernel lacks FIRST_STEP)".
    pub fn missing(&self, key: &str) -> String {
        self.unavailable
            .iter()
            .find(|u| u.0 == key)
            .map_or_else(|| format!("n/a ({key} did not run)"), |u| u.2.clone())
    }
}

pub struct Sizes {
    pub rounds: u32,
    pub repeat: u32,
    pub singles: u32,
}

pub fn run(release: bool, sizes: &Sizes) -> Result<TestRun> {
    let mut args = vec!["run", "--quiet", "--package", "xknock-tests", "--example", "bench_testrun"];
    if release {
        args.push("--release");
    }
    let (rounds, repeat, singles) =
        (sizes.rounds.to_string(), sizes.repeat.to_string(), sizes.singles.to_string());
    args.extend(["--", "--rounds", &rounds, "--repeat", &repeat, "--singles", &singles]);
    let mut cmd = crate::cargo(&args)?;
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().context("running the bench_testrun example")?;
    if !out.status.success() {
        anyhow::bail!("bench_testrun failed: {}", out.status);
    }
    parse(&out.stdout)
}

fn parse(json: &[u8]) -> Result<TestRun> {
    let v: serde_json::Value = serde_json::from_slice(json).context("bench_testrun output is not JSON")?;
    let nums = |x: &serde_json::Value| -> Vec<f64> {
        x.as_array().map(|a| a.iter().filter_map(|n| n.as_f64()).collect()).unwrap_or_default()
    };
    let classes = v["classes"]
        .as_array()
        .context("no classes")?
        .iter()
        .map(|c| Class {
            key: c["key"].as_str().unwrap_or_default().to_string(),
            label: c["label"].as_str().unwrap_or_default().to_string(),
            samples_ns: nums(&c["samples_ns"]),
        })
        .collect();
    Ok(TestRun {
        rounds: v["rounds"].as_u64().unwrap_or(0),
        repeat: v["repeat"].as_u64().unwrap_or(0),
        event_chunk: v["event_chunk"].as_u64().unwrap_or(0),
        classes,
        single_empty_ns: nums(&v["single_run"]["empty_ns"]),
        single_hit_ns: nums(&v["single_run"]["hit_v4_ns"]),
        counters_plain: v["counters_plain"].clone(),
        counters_steps: v["counters_steps"].clone(),
        counters_gated: v["counters_gated"].clone(),
        first_step_events: v["first_step_events"].as_u64(),
        unavailable: v["unavailable"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|u| {
                        let f = |k: &str| u[k].as_str().unwrap_or_default().to_string();
                        (f("key"), f("label"), f("why"))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        kernel_maps: v["kernel_maps"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.as_str().map(String::from)).collect())
            .unwrap_or_default(),
    })
}
