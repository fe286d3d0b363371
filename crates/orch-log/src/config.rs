//! Sink configuration and its environment variables.

use std::collections::BTreeSet;
use std::str::FromStr;

use crate::LogError;

/// Default `team`: the worker's name.
pub const DEFAULT_TEAM: &str = "worker-orcd";
/// Default number of leading values kept per line.
pub const DEFAULT_VALUES: usize = 10;
/// Top-k the references use for logits; a sensible `Checkpoint::top_k` for the engine.
pub const DEFAULT_TOP_K: usize = 20;

/// Which `layer.N` checkpoints to record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LayerFilter {
    #[default]
    All,
    None,
    Only(BTreeSet<u32>),
}

impl LayerFilter {
    pub fn contains(&self, layer: u32) -> bool {
        match self {
            LayerFilter::All => true,
            LayerFilter::None => false,
            LayerFilter::Only(set) => set.contains(&layer),
        }
    }
}

impl FromStr for LayerFilter {
    type Err = String;

    /// `all`, `none`, or a comma-separated list of layers and inclusive ranges: `0,5,20-23`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "all" | "" => return Ok(LayerFilter::All),
            "none" => return Ok(LayerFilter::None),
            _ => {}
        }
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim) {
            let bad = || format!("{part:?} is not a layer number or range like 3-7");
            match part.split_once('-') {
                Some((a, b)) => {
                    let a: u32 = a.trim().parse().map_err(|_| bad())?;
                    let b: u32 = b.trim().parse().map_err(|_| bad())?;
                    if a > b {
                        return Err(bad());
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(part.parse().map_err(|_| bad())?);
                }
            }
        }
        Ok(LayerFilter::Only(set))
    }
}

/// What the sink records. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// `team` field (`ORCH_LOG_TEAM`, default `worker-orcd`).
    pub team: String,
    /// How many leading values each line keeps (`ORCH_LOG_VALUES`, default 10).
    pub values: usize,
    /// Which layers to record (`ORCH_LOG_LAYERS`, default all).
    pub layers: LayerFilter,
    /// Record prefill positions too, not only the prompt's last one (`ORCH_LOG_PREFILL=1`).
    pub prefill: bool,
    /// Append to an existing file instead of truncating it (`ORCH_LOG_APPEND=1`).
    pub append: bool,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            team: DEFAULT_TEAM.to_owned(),
            values: DEFAULT_VALUES,
            layers: LayerFilter::All,
            prefill: false,
            append: false,
        }
    }
}

impl SinkConfig {
    /// Reads `ORCH_LOG_TEAM`, `ORCH_LOG_VALUES`, `ORCH_LOG_LAYERS`, `ORCH_LOG_PREFILL` and
    /// `ORCH_LOG_APPEND`; unset or empty variables keep their defaults. Does not read
    /// `ORCH_LOG_FILE`, so a CLI flag can supply the path instead.
    pub fn from_env() -> Result<SinkConfig, LogError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `from_env` over any variable source; tests use it to avoid mutating the process
    /// environment.
    pub(crate) fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<SinkConfig, LogError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let bad = |var: &'static str, value: &str, reason: String| LogError::BadEnv {
            var,
            value: value.to_owned(),
            reason,
        };
        let mut cfg = SinkConfig::default();
        if let Some(team) = get("ORCH_LOG_TEAM") {
            cfg.team = team;
        }
        if let Some(v) = get("ORCH_LOG_VALUES") {
            cfg.values = v
                .trim()
                .parse()
                .map_err(|e| bad("ORCH_LOG_VALUES", &v, format!("{e}")))?;
        }
        if let Some(v) = get("ORCH_LOG_LAYERS") {
            cfg.layers = v.parse().map_err(|e| bad("ORCH_LOG_LAYERS", &v, e))?;
        }
        if let Some(v) = get("ORCH_LOG_PREFILL") {
            cfg.prefill = parse_flag(&v).ok_or_else(|| {
                bad(
                    "ORCH_LOG_PREFILL",
                    &v,
                    "expected 1/0, true/false, yes/no".into(),
                )
            })?;
        }
        if let Some(v) = get("ORCH_LOG_APPEND") {
            cfg.append = parse_flag(&v).ok_or_else(|| {
                bad(
                    "ORCH_LOG_APPEND",
                    &v,
                    "expected 1/0, true/false, yes/no".into(),
                )
            })?;
        }
        Ok(cfg)
    }
}

fn parse_flag(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn defaults_when_unset() {
        assert_eq!(
            SinkConfig::from_lookup(env(&[])).unwrap(),
            SinkConfig::default()
        );
        let d = SinkConfig::default();
        assert_eq!(
            (d.team.as_str(), d.values, d.prefill),
            ("worker-orcd", 10, false)
        );
        assert_eq!(d.layers, LayerFilter::All);
    }

    #[test]
    fn reads_every_variable() {
        let cfg = SinkConfig::from_lookup(env(&[
            ("ORCH_LOG_TEAM", "gpu-run"),
            ("ORCH_LOG_VALUES", "64"),
            ("ORCH_LOG_LAYERS", "0, 5,20-23"),
            ("ORCH_LOG_PREFILL", "1"),
            ("ORCH_LOG_APPEND", "yes"),
        ]))
        .unwrap();
        assert_eq!(cfg.team, "gpu-run");
        assert_eq!(cfg.values, 64);
        assert_eq!(cfg.layers, LayerFilter::Only([0, 5, 20, 21, 22, 23].into()));
        assert!(cfg.prefill && cfg.append);
        assert!(cfg.layers.contains(21) && !cfg.layers.contains(6));
    }

    #[test]
    fn layer_filter_words() {
        assert_eq!("ALL".parse::<LayerFilter>(), Ok(LayerFilter::All));
        assert_eq!("none".parse::<LayerFilter>(), Ok(LayerFilter::None));
        assert!(!LayerFilter::None.contains(0));
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable() {
        for (var, value) in [
            ("ORCH_LOG_VALUES", "ten"),
            ("ORCH_LOG_LAYERS", "0,x"),
            ("ORCH_LOG_LAYERS", "5-2"),
            ("ORCH_LOG_PREFILL", "maybe"),
        ] {
            let err = SinkConfig::from_lookup(env(&[(var, value)])).unwrap_err();
            assert!(
                matches!(&err, LogError::BadEnv { var: v, .. } if *v == var),
                "{var}={value}: {err}"
            );
            assert!(err.to_string().contains(var));
        }
    }
}
