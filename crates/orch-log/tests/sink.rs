//! The sink end to end: lines on disk, parsed back, against hand-computed values.

use orch_log::{Checkpoint, HostSlice, LayerFilter, LogError, LogLine, Sink, SinkConfig, Stage};
use serde_json::Value;

fn cp<'a>(stage: Stage, data: HostSlice<'a>, shape: &'a [usize]) -> Checkpoint<'a> {
    Checkpoint {
        checkpoint: stage,
        request: None,
        token_idx: 0,
        pos: 26,
        input_token: 198,
        shape,
        data,
        source: "worker-orcd-cpu",
        top_k: None,
    }
}

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid JSON {l}: {e}")))
        .collect()
}

#[test]
fn line_matches_reference_format_and_hand_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.jsonl");
    let cfg = SinkConfig {
        values: 3,
        ..SinkConfig::default()
    };
    let mut sink = Sink::new(&path, cfg).unwrap();
    let data = [0.5f32, -1.5, 2.0, 2.0, -0.25, 1.0];
    let mut c = cp(Stage::Layer(7), HostSlice::from(&data), &[1, 6]);
    c.request = Some("haiku");
    c.token_idx = 2;
    c.pos = 28;
    c.input_token = 4938;
    sink.record(&c).unwrap();
    sink.flush().unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().next().unwrap();
    // Key order as in the golden references.
    let keys: Vec<&str> = [
        "ts",
        "team",
        "checkpoint",
        "token_idx",
        "pos",
        "input_token",
        "dtype",
        "shape",
        "values",
        "stats",
        "source",
    ]
    .into();
    let mut last = 0;
    for k in keys {
        let at = line
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} missing"));
        assert!(at >= last, "{k} out of order in {line}");
        last = at;
    }
    assert!(!line.contains("\"top\""), "no top without top_k");

    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["team"], "worker-orcd/haiku");
    assert_eq!(v["checkpoint"], "layer.7");
    assert_eq!(
        (v["token_idx"].as_u64(), v["pos"].as_u64()),
        (Some(2), Some(28))
    );
    assert_eq!(v["input_token"], 4938);
    assert_eq!(
        (v["dtype"].as_str(), v["shape"].as_str()),
        (Some("f32"), Some("[1,6]"))
    );
    assert_eq!(v["values"], serde_json::json!([0.5, -1.5, 2.0]));
    assert_eq!(v["source"], "worker-orcd-cpu");
    let s = &v["stats"];
    assert_eq!(s["min"], -1.5);
    assert_eq!(s["max"], 2.0);
    assert_eq!(s["mean"], 3.75 / 6.0);
    // 0.25 + 2.25 + 4 + 4 + 0.0625 + 1 = 11.5625
    assert_eq!(s["l2"], 11.5625f64.sqrt());
    assert_eq!(s["argmax"], 2);
    assert_eq!((s["nan"].as_u64(), s["inf"].as_u64()), (Some(0), Some(0)));
    let ts = v["ts"].as_str().unwrap();
    assert!(
        ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );

    // Our own reader type parses it back.
    let parsed: LogLine = serde_json::from_str(line).unwrap();
    assert_eq!(parsed.stage(), Some(Stage::Layer(7)));
    assert_eq!(parsed.request_name(), Some("haiku"));
}

#[test]
fn nan_and_inf_stay_valid_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.jsonl");
    let mut sink = Sink::new(&path, SinkConfig::default()).unwrap();
    let data = [f32::NAN, 1.0, f32::INFINITY, f32::NEG_INFINITY, -3.0];
    let mut c = cp(Stage::Logits, HostSlice::from(&data), &[1, 5]);
    c.top_k = Some(3);
    sink.record(&c).unwrap();
    let all_bad = [f32::NAN; 4];
    sink.record(&cp(Stage::FinalNorm, HostSlice::from(&all_bad), &[4]))
        .unwrap();
    sink.flush().unwrap();

    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2);
    let v = &lines[0];
    assert_eq!(
        v["values"],
        serde_json::json!([null, 1.0, null, null, -3.0])
    );
    assert_eq!(v["stats"]["nan"], 1);
    assert_eq!(v["stats"]["inf"], 2);
    assert_eq!(v["stats"]["max"], 1.0);
    assert_eq!(v["stats"]["argmax"], 1);
    assert_eq!(v["top"], serde_json::json!([[1, 1.0], [4, -3.0]]));
    let w = &lines[1];
    assert_eq!(w["stats"]["nan"], 4);
    assert!(w["stats"]["min"].is_null() && w["stats"]["argmax"].is_null());
}

#[test]
fn values_truncated_but_stats_cover_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trunc.jsonl");
    let mut sink = Sink::new(&path, SinkConfig::default()).unwrap();
    let data: Vec<f32> = (0..896).map(|i| i as f32 * 0.5).collect();
    sink.record(&cp(Stage::Embedding, HostSlice::from(&data), &[1, 896]))
        .unwrap();
    sink.flush().unwrap();
    let v = &read_lines(&path)[0];
    let values = v["values"].as_array().unwrap();
    assert_eq!(values.len(), 10, "ORCH_LOG_VALUES default");
    assert_eq!(values[9], 4.5);
    assert_eq!(v["stats"]["max"], 447.5);
    assert_eq!(v["stats"]["argmax"], 895);
    assert_eq!(v["stats"]["mean"], 223.75);
}

#[test]
fn logits_top_k_highest_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("top.jsonl");
    let mut sink = Sink::new(&path, SinkConfig::default()).unwrap();
    let mut logits = vec![0.0f32; 151_936];
    logits[49_891] = 16.07433;
    logits[10_642] = 14.38857;
    logits[38] = 14.33166;
    logits[641] = -100.0;
    logits[7] = 14.33166; // ties with 38: the lower id comes first
    let mut c = cp(Stage::Logits, HostSlice::from(&logits), &[1, 151_936]);
    c.top_k = Some(4);
    sink.record(&c).unwrap();
    sink.flush().unwrap();
    let v = &read_lines(&path)[0];
    assert_eq!(
        v["top"],
        serde_json::json!([
            [49891, 16.07433],
            [10642, 14.38857],
            [7, 14.33166],
            [38, 14.33166]
        ])
    );
    assert_eq!(v["stats"]["argmax"], 49_891);
    assert_eq!(v["stats"]["min"], -100.0);
}

#[test]
fn half_precision_data_records_its_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f16.jsonl");
    let mut sink = Sink::new(&path, SinkConfig::default()).unwrap();
    let data: Vec<half::f16> = [0.1f32, -2.0]
        .iter()
        .map(|&x| half::f16::from_f32(x))
        .collect();
    sink.record(&cp(Stage::Layer(0), HostSlice::from(&data), &[2]))
        .unwrap();
    sink.flush().unwrap();
    let v = &read_lines(&path)[0];
    assert_eq!(v["dtype"], "f16");
    // f16(0.1) = 0.0999755859375, printed as the shortest f32 decimal.
    assert_eq!(v["values"], serde_json::json!([0.099975586, -2.0]));
    assert_eq!(v["stats"]["max"], 0.0999755859375);
}

#[test]
fn layer_filter_and_shape_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter.jsonl");
    let cfg = SinkConfig {
        layers: "0,5".parse::<LayerFilter>().unwrap(),
        ..SinkConfig::default()
    };
    let mut sink = Sink::new(&path, cfg).unwrap();
    assert!(sink.wants_layer(5) && !sink.wants_layer(4));
    let data = [1.0f32; 4];
    for n in 0..8 {
        sink.record(&cp(Stage::Layer(n), HostSlice::from(&data), &[1, 4]))
            .unwrap();
    }
    let err = sink
        .record(&cp(Stage::Logits, HostSlice::from(&data), &[1, 5]))
        .unwrap_err();
    assert!(
        matches!(err, LogError::ShapeMismatch { len: 4, .. }),
        "{err}"
    );
    sink.flush().unwrap();
    let names: Vec<String> = read_lines(&path)
        .iter()
        .map(|v| v["checkpoint"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["layer.0", "layer.5"]);
}

#[test]
fn drop_flushes_and_truncate_vs_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drop.jsonl");
    let data = [1.0f32];
    for append in [false, false, true] {
        let cfg = SinkConfig {
            append,
            ..SinkConfig::default()
        };
        let mut sink = Sink::new(&path, cfg).unwrap();
        sink.record(&cp(Stage::Embedding, HostSlice::from(&data), &[1]))
            .unwrap();
        // No explicit flush: Drop writes the line.
    }
    // Two truncating runs leave one line; the appending run adds a second.
    assert_eq!(read_lines(&path).len(), 2);
}

#[test]
fn unopenable_path_is_an_error_at_start() {
    let err = Sink::new(
        "/nonexistent-orch-log-dir/sub/log.jsonl",
        SinkConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, LogError::Open { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent-orch-log-dir/sub/log.jsonl")
    );
}

/// `/dev/full` opens fine and fails every write with ENOSPC: the disk-full case, and it works
/// even as root, where a read-only directory would not stop writes.
#[cfg(target_os = "linux")]
#[test]
fn write_failure_reported_once_then_disabled() {
    let mut sink = Sink::new("/dev/full", SinkConfig::default()).unwrap();
    let data = [1.0f32, 2.0];
    let c = cp(Stage::Layer(0), HostSlice::from(&data), &[2]);
    sink.record(&c).unwrap();
    let err = sink.flush().unwrap_err();
    match &err {
        LogError::Write { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(28), "ENOSPC: {source}")
        }
        other => panic!("expected a write error, got {other}"),
    }
    assert!(!sink.is_enabled());
    assert!(!sink.wants_layer(0));
    // Later calls are silent no-ops: serving goes on.
    sink.record(&c).unwrap();
    sink.flush().unwrap();
    sink.flush().unwrap();
}

/// The engine moves its sink into the inference thread.
#[test]
fn sink_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Sink>();
}
